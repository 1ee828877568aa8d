//! Wiring: the Kubeconfig controller, the watches that bring an object back within seconds of a
//! change to anything it depends on, and shutdown on SIGTERM or Ctrl-C.
//!
//! Watches (each a reflector whose cache the reconciler reads):
//! - Kubeconfigs (the controller's own);
//! - Secrets labelled as managed by this controller (a Kubeconfig's Secret and its copies, each
//!   naming its Kubeconfig in an annotation): an edit or a deletion is repaired; the echo of
//!   the controller's own write brings nothing back;
//! - CertificateSigningRequests the controller made: a signature is taken at once;
//! - ClusterRoleBindings and RoleBindings labelled as managed: mapped back through their
//!   annotation, so a deleted or edited binding is restored;
//! - Authorities and ClusterAuthorities: their Kubeconfigs are looked at again;
//! - the metadata of all Namespaces: a change of labels re-checks the namespace selectors of
//!   the authorities its Kubeconfigs use;
//! - the metadata of all Secrets and ConfigMaps: a change to a CA Secret, a CA bundle or a
//!   kubeconfig Secret brings back the Kubeconfigs of every authority that reads it, and the
//!   cluster CA ConfigMap `kube-root-ca.crt` those of its namespace. Only metadata is kept.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    certificates::v1::CertificateSigningRequest,
    core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};

use crate::{
    api::{
        Authority, AuthorityConfig, AuthorityKind, AuthorityRef, ClusterAuthority, FIELD_MANAGER,
        KUBECONFIG_ANNOTATION, Kubeconfig, KubeconfigGenerator, MANAGED_BY, MANAGED_BY_LABEL,
    },
    reconcile::{
        Context, Error,
        authority::{ROOT_CA_CONFIG_MAP, authority_ref, config_maps_of, refers_to, secrets_of},
        generator, kubeconfig,
        managed::ManagedSecret,
        onboarding,
    },
};

/// How the controller runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The authority of Kubeconfigs that name none.
    pub default_authority: Option<AuthorityRef>,
    /// Where to answer `/livez`, `/readyz` and `/metrics`, if anywhere.
    pub health_addr: Option<std::net::SocketAddr>,
    /// How many Kubeconfigs are reconciled at once (0: no limit).
    pub concurrency: u16,
    /// Lead through a Lease, so that several replicas can run.
    pub leader_election: Option<LeaderElection>,
}

/// Enough to keep the API server busy without queueing thousands of requests in it.
pub const DEFAULT_CONCURRENCY: u16 = 32;

/// Runs the controller until SIGTERM or Ctrl-C; in-flight reconciles finish first.
pub async fn run(client: Client, options: Options) -> Result<(), Error> {
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let all = watcher::Config::default;

    // The cache keeps a summary of each managed Secret's data, not the data.
    let (secrets, secret_events) = reflect(
        Api::<Secret>::all(client.clone()),
        managed.clone(),
        ManagedSecret::from,
    );
    let (crbs, crb_events) = reflect(
        Api::<ClusterRoleBinding>::all(client.clone()),
        managed.clone(),
        keep,
    );
    let (rbs, rb_events) = reflect(
        Api::<RoleBinding>::all(client.clone()),
        managed.clone(),
        keep,
    );
    let (roles, role_events) = reflect(Api::<Role>::all(client.clone()), managed.clone(), keep);
    let (authorities, authority_events) =
        reflect(Api::<Authority>::all(client.clone()), all(), keep);
    let (cluster_authorities, cluster_authority_events) =
        reflect(Api::<ClusterAuthority>::all(client.clone()), all(), keep);
    let (namespaces, namespace_events) = reflect(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        all(),
        keep,
    );
    // The CSRs the controller made: a signature (or a denial) brings their Kubeconfig back.
    let csr_events = watcher(
        Api::<PartialObjectMeta<CertificateSigningRequest>>::all(client.clone()),
        managed.clone(),
    )
    .default_backoff()
    .touched_objects();
    let config_map_events = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        all(),
    )
    .default_backoff()
    .touched_objects();
    // Every other Secret (a CA, a CA bundle, a kubeconfig an authority reads), metadata only.
    let unmanaged = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY}"));
    let (secret_metadata, secret_meta_events) = reflect(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        unmanaged,
        keep,
    );

    let (kubeconfigs, kubeconfig_events) =
        reflect(Api::<Kubeconfig>::all(client.clone()), all(), keep);
    let kubeconfig_events = kubeconfig_events.predicate_filter(not_status, Default::default());
    let controller = Controller::for_stream(kubeconfig_events, kubeconfigs.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency));
    let reporter = Reporter {
        controller: "kubeconfig-authority".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context {
        reporter: reporter.clone(),
        client: client.clone(),
        kubeconfigs: kubeconfigs.clone(),
        authorities: authorities.clone(),
        cluster_authorities: cluster_authorities.clone(),
        secrets,
        cluster_role_bindings: crbs,
        role_bindings: rbs,
        roles,
        namespaces: namespaces.clone(),
        secret_metadata,
        default_authority: options.default_authority.clone(),
        ca_cache: Default::default(),
        pending_csrs: Default::default(),
        own_writes: Default::default(),
        metrics: crate::metrics::Metrics::new(kubeconfigs.clone()),
    });

    let default = options.default_authority.clone();
    let by_authority = {
        let (kubeconfigs, default) = (kubeconfigs.clone(), default.clone());
        move |a: Authority| {
            users_of(
                &kubeconfigs,
                default.as_ref(),
                AuthorityKind::Authority,
                a.namespace().as_deref(),
                &a.name_any(),
            )
        }
    };
    let by_cluster_authority = {
        let (kubeconfigs, default) = (kubeconfigs.clone(), default.clone());
        move |a: ClusterAuthority| {
            users_of(
                &kubeconfigs,
                default.as_ref(),
                AuthorityKind::ClusterAuthority,
                None,
                &a.name_any(),
            )
        }
    };
    // A change to an object some authority reads (a CA Secret, a CA bundle, a kubeconfig
    // Secret) brings back the Kubeconfigs of those authorities.
    let dependents = {
        let (kubeconfigs, default) = (kubeconfigs.clone(), default.clone());
        move |key: (String, String), reads: ReadsFn| {
            let mut out = Vec::new();
            for a in authorities.state() {
                if reads(&a.spec.config, a.namespace().as_deref()).contains(&key) {
                    out.extend(users_of(
                        &kubeconfigs,
                        default.as_ref(),
                        AuthorityKind::Authority,
                        a.namespace().as_deref(),
                        &a.name_any(),
                    ));
                }
            }
            for a in cluster_authorities.state() {
                if reads(&a.spec.config, None).contains(&key) {
                    out.extend(users_of(
                        &kubeconfigs,
                        default.as_ref(),
                        AuthorityKind::ClusterAuthority,
                        None,
                        &a.name_any(),
                    ));
                }
            }
            out
        }
    };
    let by_secret = {
        let dependents = dependents.clone();
        move |s: PartialObjectMeta<Secret>| {
            dependents(
                (s.namespace().unwrap_or_default(), s.name_any()),
                secrets_of,
            )
        }
    };
    let by_config_map = {
        let kubeconfigs = kubeconfigs.clone();
        move |c: PartialObjectMeta<ConfigMap>| {
            let namespace = c.namespace().unwrap_or_default();
            let mut out = dependents((namespace.clone(), c.name_any()), config_maps_of);
            // The cluster's CA, published in every namespace: the default CA bundle of token
            // and CSR authorities, read in the Kubeconfig's own namespace.
            if c.name_any() == ROOT_CA_CONFIG_MAP {
                out.extend(
                    kubeconfigs
                        .state()
                        .into_iter()
                        .filter(|kc| kc.namespace().as_deref() == Some(namespace.as_str()))
                        .map(|kc| ObjectRef::from_obj(&*kc)),
                );
            }
            out
        }
    };

    // A namespace's labels decide which ClusterAuthorities serve it, and where copies go.
    let by_namespace = {
        let kubeconfigs = kubeconfigs.clone();
        move |n: PartialObjectMeta<Namespace>| {
            let namespace = n.name_any();
            kubeconfigs
                .state()
                .into_iter()
                .filter(|kc| {
                    kc.namespace().as_deref() == Some(namespace.as_str())
                        || kc.spec.distribution.is_some()
                })
                .map(|kc| ObjectRef::from_obj(&*kc))
                .collect::<Vec<_>>()
        }
    };

    let health = Arc::new(Health::default());
    if let Some(addr) = options.health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Startup(format!("listening on {addr} for health checks: {e}")))?;
        tokio::spawn(serve_http(
            listener,
            health.clone(),
            context.metrics.clone(),
        ));
    }

    // ServiceAccounts that ask for a kubeconfig by annotation, and the Kubeconfigs made for
    // them (owned by the ServiceAccount).
    let onboarding = Controller::new(Api::<ServiceAccount>::all(client.clone()), all())
        .owns(
            Api::<Kubeconfig>::all(client.clone()),
            watcher::Config::default().labels(onboarding::SERVICE_ACCOUNT_LABEL),
        )
        .shutdown_on_signal()
        .run(
            onboarding::reconcile,
            |sa, error: &Error, _| {
                warn!(serviceaccount = %format!("{}/{}", sa.namespace().unwrap_or_default(), sa.name_any()), reason = error.reason(), "{error}");
                Action::requeue(Duration::from_secs(5))
            },
            Arc::new(onboarding::Context {
                client: client.clone(),
                kubeconfigs: kubeconfigs.clone(),
                recorder: Recorder::new(client.clone(), reporter.clone()),
                default_authority: options.default_authority.clone(),
            }),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ObjectNotFound(_) => {}
                    other => warn!("onboarding failed: {other}"),
                }
            }
        });

    // KubeconfigGenerators: the Kubeconfigs they own, and any change of their target kinds
    // or of namespaces brings them back.
    let (generator_context, generator_triggers) = generator::Context::new(
        client.clone(),
        namespaces,
        context.kubeconfigs.clone(),
        context.authorities.clone(),
    );
    let generators = Controller::new(Api::<KubeconfigGenerator>::all(client.clone()), all())
        .owns(
            Api::<Kubeconfig>::all(client.clone()),
            watcher::Config::default().labels(generator::GENERATOR_LABEL),
        )
        .reconcile_all_on(generator_triggers)
        .shutdown_on_signal()
        .run(
            generator::reconcile,
            generator::error_policy,
            Arc::new(generator_context),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ObjectNotFound(_) => {}
                    other => warn!("generator failed: {other}"),
                }
            }
        });

    info!("starting the Kubeconfig controller");
    let own_writes = context.own_writes.clone();
    let kubeconfig_controller = controller
        // Managed Secrets and their copies in other namespaces name their Kubeconfig.
        .reconcile_on(secret_events.filter_map(move |event| {
            futures::future::ready(match event {
                Ok(s) if own_writes.is_echo(&s) => None,
                Ok(s) => owner_of(s.kubeconfig.as_ref()),
                Err(e) => {
                    warn!("watching managed Secrets: {e}");
                    None
                }
            })
        }))
        .watches_stream(
            csr_events,
            |c: PartialObjectMeta<CertificateSigningRequest>| {
                owner_of(c.annotations().get(KUBECONFIG_ANNOTATION))
            },
        )
        .watches_stream(crb_events, |b: ClusterRoleBinding| {
            owner_of(b.annotations().get(KUBECONFIG_ANNOTATION))
        })
        .watches_stream(rb_events, |b: RoleBinding| {
            owner_of(b.annotations().get(KUBECONFIG_ANNOTATION))
        })
        .watches_stream(role_events, |r: Role| {
            owner_of(r.annotations().get(KUBECONFIG_ANNOTATION))
        })
        .watches_stream(authority_events, by_authority)
        .watches_stream(cluster_authority_events, by_cluster_authority)
        .watches_stream(secret_meta_events, by_secret)
        .watches_stream(config_map_events, by_config_map)
        .watches_stream(namespace_events, by_namespace)
        .shutdown_on_signal()
        .run(kubeconfig::reconcile, error_policy, context.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ObjectNotFound(_) => {}
                    other => warn!("reconcile failed: {other}"),
                }
            }
        });
    let controllers = futures::future::join3(kubeconfig_controller, onboarding, generators);

    let Some(election) = options.leader_election else {
        lead(&context, &health);
        controllers.await;
        info!("stopped");
        return Ok(());
    };
    // Several replicas: one leads (reconciles), the others are ready and idle.
    health.set(HealthState::Follower);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await
        .map_err(|e| Error::Startup(format!("leader election: {e}")))?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.lease), "waiting to lead");
    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err(Error::Startup("leader election stopped".into()));
                }
            }
            () = terminated() => {
                info!("stopped before leading");
                return Ok(());
            }
        }
    }
    info!(identity = %election.identity, "leading");
    lead(&context, &health);
    let mut watch = leader.clone();
    let lost = async move {
        while *watch.borrow_and_update() {
            if watch.changed().await.is_err() {
                break;
            }
        }
    };
    let outcome = tokio::select! {
        _ = controllers => Ok(()),
        () = lost => Err(Error::Startup("lost the leader lease; exiting so that another replica leads".into())),
    };
    context.metrics.leader.set(0);
    // Closing the channel makes the lease task release the lease.
    drop(leader);
    if let Ok(Err(e)) = lease_task.await {
        warn!("releasing the lease: {e}");
    }
    info!("stopped");
    outcome
}

/// How long a lease is held without renewal, and how long before its end it is renewed: a
/// replica that dies is replaced within about `LEASE_SECONDS`.
const LEASE_SECONDS: u64 = 10;
const LEASE_GRACE_SECONDS: u64 = 3;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
}

/// Marks this replica as leader: ready once its caches are filled.
fn lead(context: &Arc<Context>, health: &Arc<Health>) {
    context.metrics.leader.set(1);
    health.set(HealthState::Syncing);
    let (context, health) = (context.clone(), health.clone());
    tokio::spawn(async move {
        context.caches_ready().await;
        health.set(HealthState::Synced);
    });
}

/// SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HealthState {
    Starting = 0,
    /// Another replica leads: ready, and idle.
    Follower = 1,
    /// Leading, caches still filling.
    Syncing = 2,
    /// Leading, caches filled.
    Synced = 3,
}

#[derive(Debug, Default)]
pub struct Health(std::sync::atomic::AtomicU8);

impl Health {
    fn set(&self, state: HealthState) {
        self.0
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
    }

    fn answer(&self) -> (&'static str, &'static str) {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => ("200 OK", "ok: follower, idle"),
            3 => ("200 OK", "ok: leader, caches synced"),
            2 => (
                "503 Service Unavailable",
                "leader, caches are not synced yet",
            ),
            _ => ("503 Service Unavailable", "starting"),
        }
    }
}

/// What brings a Kubeconfig back through its own watch: anything but its status. The status
/// is the controller's own, and each write of it would otherwise bring the object back once
/// more for nothing (a third of the reconciles of an issuance; the renewal is scheduled).
fn not_status(kc: &Kubeconfig) -> Option<u64> {
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
fn keep<K>(object: K) -> K {
    object
}

/// A reflector over `api`: the cache the reconciler reads (each object turned by `cached` into
/// what the cache keeps of it), and the stream of the objects it saw change (deletions
/// included) that triggers reconciles.
fn reflect<K, T>(
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
        futures::TryStreamExt::map_ok(watcher(api, config), move |event| match event {
            watcher::Event::Apply(o) => watcher::Event::Apply(cache(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(cache(o)),
            watcher::Event::InitApply(o) => watcher::Event::InitApply(cache(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        }),
    )
    .default_backoff()
    .touched_objects();
    (store, events)
}

fn error_policy(kc: Arc<Kubeconfig>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::metrics::Metrics::count(&ctx.metrics.failures, error.reason());
    warn!(kubeconfig = %format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any()), reason = error.reason(), "{error}");
    Action::requeue(Duration::from_secs(5))
}

/// The objects (namespace, name) an authority reads, of one kind.
type ReadsFn = fn(&AuthorityConfig, Option<&str>) -> Vec<(String, String)>;

/// The Kubeconfig an object's annotation names.
fn owner_of(annotation: Option<&String>) -> Option<ObjectRef<Kubeconfig>> {
    let (namespace, name) = annotation?.split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The Kubeconfigs that use an authority.
fn users_of(
    kubeconfigs: &Store<Kubeconfig>,
    default: Option<&AuthorityRef>,
    kind: AuthorityKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<Kubeconfig>> {
    kubeconfigs
        .state()
        .into_iter()
        .filter(|kc| {
            let ns = kc.namespace().unwrap_or_default();
            authority_ref(kc, default).is_some_and(|r| refers_to(r, &ns, kind, namespace, name))
        })
        .map(|kc| ObjectRef::from_obj(&*kc))
        .collect()
}

/// `/livez` answers 200 while the process runs; `/readyz` 200 once this replica leads with
/// its caches filled, or follows (idle); `/metrics` the Prometheus metrics (OpenMetrics). A
/// deliberately small HTTP/1.0 responder for probes and scrapes.
async fn serve_http(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let text = "text/plain";
            let (code, content_type, body) = match path {
                "/livez" => ("200 OK", text, "ok".to_string()),
                "/readyz" => {
                    let (code, body) = health.answer();
                    (code, text, body.to_string())
                }
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                _ => ("404 Not Found", text, "not found".to_string()),
            };
            let response = format!(
                "HTTP/1.0 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
