//! Target clusters (an authority's `spec.target`): one client and one set of watches per
//! target (the labelled Roles and bindings), started when a Kubeconfig first needs it, shared
//! by every Kubeconfig of that target, started again when its admin kubeconfig changes, and
//! stopped when no authority names it any more ([`Targets::retain`]). A change in a target
//! brings the Kubeconfig that owns the object back, as in the controller's own cluster.
//!
//! One target may take only half of the reconcile slots (`--concurrency`) at a time
//! ([`Claim`]): a target that stops answering without closing its connections (its requests
//! then wait until the HTTP/2 pings give the connection up, up to 20 s) holds those and no
//! more, and the Kubeconfigs of every other cluster go on in the other half.

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig as KubeconfigFile},
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{info, warn};

use super::{
    Context,
    resolve::{CA_KEY_ISOLATED, patch_status},
};
use crate::{
    api::{
        AuthorityKind, AuthorityStatus, KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, KeyRef,
        Kubeconfig,
    },
    client::{
        REQUEST_TIMEOUT,
        cluster::Cluster,
        watch::{Watches, keep, reflect},
    },
    model::{
        Error, Problem, Reason, Result,
        authority::{Contact, TARGET_KEY, target_of},
        labels::owner_of,
    },
};

/// How long after a target's watches start a reconcile may wait for its caches before it
/// reports the target unreachable.
const FIRST_LIST: Duration = Duration::from_secs(5);

struct Entry {
    /// The resourceVersion of the admin kubeconfig's Secret the client was built from.
    version: Option<String>,
    /// When its watches started.
    started: Instant,
    cluster: Arc<Cluster>,
    /// The reconciles that may use the target at once.
    places: Arc<Semaphore>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

pub struct Targets {
    entries: Mutex<HashMap<KeyRef, Entry>>,
    /// How many reconciles may use one target at once.
    places: usize,
    /// Held while a target starts.
    starting: tokio::sync::Mutex<()>,
    /// Kubeconfigs whose objects in a target changed.
    trigger: mpsc::UnboundedSender<ObjectRef<Kubeconfig>>,
}

impl Targets {
    /// The targets of a controller that runs `concurrency` reconciles at once, and the stream
    /// of Kubeconfigs their watches bring back.
    pub fn new(concurrency: u16) -> (Self, mpsc::UnboundedReceiver<ObjectRef<Kubeconfig>>) {
        let (trigger, changes) = mpsc::unbounded_channel();
        let targets = Self {
            entries: Mutex::default(),
            places: usize::from(concurrency / 2).max(1),
            starting: tokio::sync::Mutex::default(),
            trigger,
        };
        (targets, changes)
    }

    /// Each target started: whether it can be reached now, and when it was last heard from.
    pub fn contacts(&self) -> Vec<Contact> {
        let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        let Ok(entries) = self.entries.lock() else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|(key, entry)| {
                let cluster = &entry.cluster;
                let last = cluster
                    .watches
                    .as_ref()
                    .and_then(|w| w.last_contact(now))
                    .map(|at| wall - now.duration_since(at));
                Contact {
                    target: key.clone(),
                    error: cluster.unreachable(),
                    last,
                }
            })
            .collect()
    }

    /// Stops the targets `keep` does not want.
    pub fn retain(&self, keep: impl Fn(&KeyRef) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|key, _| {
                let kept = keep(key);
                if !kept {
                    info!(target_cluster = %key.name, "no authority names the target any more: its watches stop");
                }
                kept
            });
        }
    }

    /// The target whose admin kubeconfig is `key` (namespace and key filled in), its caches
    /// filled, for as long as the [`Claim`] is held; `Ok(Err(problem))` when its Secret is
    /// missing or invalid, or it cannot be reached; [`Error::TargetBusy`] when as many
    /// reconciles as may use it at once do (the reconcile is tried again soon, with no write).
    pub async fn cluster(&self, key: &KeyRef, ctx: &Context) -> Result<Result<Claim, Problem>> {
        let namespace = key.namespace.clone().unwrap_or_default();
        let version = ctx
            .secret_metadata
            .get(&ObjectRef::new(&key.name).within(&namespace))
            .and_then(|s| s.resource_version());
        let current = || {
            self.entries.lock().ok().and_then(|entries| {
                entries
                    .get(key)
                    .filter(|e| e.version == version)
                    .map(|e| (e.cluster.clone(), e.started, e.places.clone()))
            })
        };
        let (cluster, started, places) = match current() {
            Some(current) => current,
            None => {
                // One start at a time: two reconciles starting the same target would each
                // start its watches, and the second start would stop the first's.
                let _starting = self.starting.lock().await;
                match current() {
                    Some(current) => current,
                    None => match self.start(key, &namespace, version.clone(), ctx).await? {
                        Ok(started) => started,
                        Err(problem) => return Ok(Err(problem)),
                    },
                }
            }
        };
        let Ok(place) = places.try_acquire_owned() else {
            return Err(Error::TargetBusy(format!(
                "{} is in use by {} reconciles already",
                cluster.described, self.places
            )));
        };
        // Only the first FIRST_LIST after the start is waited for, and not once a watch has
        // failed: a target down when its watches start must not hold a reconcile slot for
        // each of its Kubeconfigs every time they are looked at (with more of them than slots,
        // every other Kubeconfig would wait).
        let wait = match cluster.unreachable() {
            Some(_) => Duration::ZERO,
            None => FIRST_LIST.saturating_sub(started.elapsed()),
        };
        if !cluster.filled_within(wait).await {
            let error = cluster
                .unreachable()
                .unwrap_or_else(|| "no answer yet".into());
            return Ok(Err(unreachable(&cluster, &error)));
        }
        Ok(match cluster.unreachable() {
            Some(error) => Err(unreachable(&cluster, &error)),
            None => Ok(Claim {
                cluster,
                _place: Some(place),
            }),
        })
    }

    /// Builds the client of a target from its admin kubeconfig and starts its watches: the
    /// cluster, when they started, and its places.
    #[allow(clippy::type_complexity)]
    async fn start(
        &self,
        key: &KeyRef,
        namespace: &str,
        version: Option<String>,
        ctx: &Context,
    ) -> Result<Result<(Arc<Cluster>, Instant, Arc<Semaphore>), Problem>> {
        let item = key.key.as_deref().unwrap_or(TARGET_KEY);
        let what = format!(
            "the target's admin kubeconfig (Secret {namespace}/{}, key {item})",
            key.name
        );
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&key.name)
            .await
            .map_err(Error::kube(format!(
                "reading Secret {namespace}/{}",
                key.name
            )))?;
        let Some(text) = secret
            .and_then(|s| s.data)
            .and_then(|mut d| d.remove(item))
            .and_then(|b| String::from_utf8(b.0).ok())
        else {
            return Ok(Err(Problem::new(
                Reason::KubeconfigSecretNotFound,
                format!("{what} does not exist or lacks the key"),
            )));
        };
        let client = match client_from(&text).await {
            Ok(client) => client,
            Err(e) => {
                return Ok(Err(Problem::new(
                    Reason::KubeconfigSecretInvalid,
                    format!("{what}: {e}"),
                )));
            }
        };
        let server = KubeconfigFile::from_yaml(&text)
            .ok()
            .and_then(|k| k.clusters.into_iter().next())
            .and_then(|c| c.cluster)
            .and_then(|c| c.server)
            .unwrap_or_default();
        let (cluster, tasks) = self.watch(
            client,
            format!("target cluster {server}"),
            key.clone(),
            ctx.kubeconfigs.clone(),
        );
        info!(target_cluster = %server, secret = %format!("{namespace}/{}", key.name), "watching a target cluster");
        let (started, places) = (Instant::now(), Arc::new(Semaphore::new(self.places)));
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                key.clone(),
                Entry {
                    version,
                    started,
                    cluster: cluster.clone(),
                    places: places.clone(),
                    tasks,
                },
            );
        }
        Ok(Ok((cluster, started, places)))
    }

    /// The watches of a target's labelled Roles and bindings: caches, and a task per watch
    /// that brings the owning Kubeconfig back on every change, and every Kubeconfig of the
    /// target (`key`, as their status records it) when the watch fails: they report it.
    fn watch(
        &self,
        client: Client,
        described: String,
        key: KeyRef,
        kubeconfigs: Store<Kubeconfig>,
    ) -> (Arc<Cluster>, Vec<tokio::task::AbortHandle>) {
        let watches = Arc::new(Watches::default());
        let mut tasks = Vec::new();
        let mut follow = |events: Owners| {
            let trigger = self.trigger.clone();
            let (key, kubeconfigs) = (key.clone(), kubeconfigs.clone());
            let task = tokio::spawn(events.for_each(move |event| {
                match event {
                    Ok(Some(owner)) => {
                        let _ = trigger.send(owner);
                    }
                    Ok(None) => {}
                    Err(()) => {
                        let of_target = kubeconfigs.state_filter(|kc| {
                            kc.status.as_ref().and_then(|s| s.target.as_deref()) == Some(&key)
                        });
                        for kc in of_target {
                            let _ = trigger.send(ObjectRef::from_obj(&*kc));
                        }
                    }
                }
                futures::future::ready(())
            }));
            tasks.push(task.abort_handle());
        };
        let cluster_role_bindings = labelled(&watches, &described, &client, &mut follow);
        let role_bindings = labelled(&watches, &described, &client, &mut follow);
        let roles = labelled(&watches, &described, &client, &mut follow);
        let cluster = Arc::new(Cluster {
            client,
            cluster_role_bindings,
            role_bindings,
            roles,
            watches: Some(watches),
            described,
        });
        (cluster, tasks)
    }
}

/// A cluster for one reconcile: the controller's own, or a target with one of its places held
/// until the claim is dropped.
pub struct Claim {
    cluster: Arc<Cluster>,
    _place: Option<OwnedSemaphorePermit>,
}

impl Claim {
    /// The controller's own cluster, which any number of reconciles use at once.
    pub fn local(cluster: Arc<Cluster>) -> Self {
        Self {
            cluster,
            _place: None,
        }
    }
}

impl Deref for Claim {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// What a target's watch passes on: the Kubeconfig an object names, or a failure.
type Owners = BoxStream<'static, Result<Option<ObjectRef<Kubeconfig>>, ()>>;

/// A cache of the objects of kind `K` labelled as some Kubeconfig's in a target, whose changes
/// go to `follow`.
fn labelled<K>(
    watches: &Arc<Watches>,
    described: &str,
    client: &Client,
    follow: &mut impl FnMut(Owners),
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, events) = reflect(
        watches,
        &format!("{} of {described}", K::kind(&())),
        Api::<K>::all(client.clone()),
        watcher::Config::default().labels(KUBECONFIG_UID_LABEL),
        keep,
    );
    follow(events.map(|e| e.map(|o| owner(&o)).map_err(drop)).boxed());
    store
}

/// The Kubeconfig an object in a target names as its owner.
fn owner<K: Resource>(object: &K) -> Option<ObjectRef<Kubeconfig>> {
    let annotation = object
        .meta()
        .annotations
        .as_ref()?
        .get(KUBECONFIG_ANNOTATION)?;
    let (namespace, name) = owner_of(annotation)?;
    Some(ObjectRef::new(name).within(namespace))
}

fn unreachable(cluster: &Cluster, error: &str) -> Problem {
    Problem::new(
        Reason::TargetUnreachable,
        format!(
            "{} cannot be reached or refuses the controller ({error}); retrying. Its bindings cannot be checked or changed until it answers",
            cluster.described
        ),
    )
}

/// A client for a kubeconfig's current context. A target that does not answer a connection
/// within 5 s, or a request's headers within [`REQUEST_TIMEOUT`] (as the controller's own
/// client), counts as unreachable; reads keep kube's default timeout, longer than a watch's (a
/// shorter one ends every quiet watch, which then lists again: measured, twice a minute).
async fn client_from(text: &str) -> std::result::Result<Client, String> {
    let file = KubeconfigFile::from_yaml(text).map_err(|e| e.to_string())?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    config.connect_timeout = Some(Duration::from_secs(5));
    let client = crate::client::connect::builder(config)
        .map_err(|e| e.to_string())?
        .with_layer(&tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT))
        .build();
    Ok(client)
}

/// Writes each authority's `status.target` when [`Contact::status`] says so, for the targets
/// started (`contacts`, from [`Targets::contacts`]; an authority no Kubeconfig uses yet is not
/// reported). At most one write per authority per call.
pub async fn report(ctx: &Context, contacts: &[Contact]) {
    let now = std::time::SystemTime::now();
    let authorities = ctx.authorities.state().into_iter().map(|a| {
        let namespace = a.namespace();
        let key = target_of(&a.spec.config, namespace.as_deref());
        (
            AuthorityKind::Authority,
            namespace,
            a.name_any(),
            key,
            a.status.clone(),
        )
    });
    let cluster_authorities = ctx.cluster_authorities.state().into_iter().map(|a| {
        let key = target_of(&a.spec.config, None);
        (
            AuthorityKind::ClusterAuthority,
            None,
            a.name_any(),
            key,
            a.status.clone(),
        )
    });
    for (kind, namespace, name, key, status) in authorities.chain(cluster_authorities) {
        let Some(key) = key else { continue };
        let Some(contact) = contacts.iter().find(|c| c.target == key) else {
            continue;
        };
        let status = status.unwrap_or_default();
        let Some(target) = contact.status(status.target.as_ref(), now) else {
            continue;
        };
        // Everything this controller says of the authority goes in the one apply.
        let status = AuthorityStatus {
            conditions: status
                .conditions
                .into_iter()
                .filter(|c| c.type_ == CA_KEY_ISOLATED)
                .collect(),
            target: Some(target),
        };
        if let Err(e) = patch_status(ctx, kind, namespace.as_deref(), &name, &status).await {
            warn!(authority = %name, "reporting its target cluster: {e}");
        }
    }
}
