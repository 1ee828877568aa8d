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

use futures::{StreamExt, TryStreamExt};
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

mod leader;

use leader::LEASE_SECONDS;
pub use leader::LeaderElection;

use crate::{
    api::{
        Authority, AuthorityConfig, AuthorityKind, AuthorityRef, ClusterAuthority,
        KUBECONFIG_ANNOTATION, Kubeconfig, KubeconfigGenerator, MANAGED_BY, MANAGED_BY_LABEL,
    },
    client::watch::{self, Watches, watch},
    controllers::{
        generator,
        kubeconfig::{
            self, Context,
            orphans::{self, Candidate},
            resolve::{ROOT_CA_CONFIG_MAP, authority_ref, config_maps_of, refers_to, secrets_of},
        },
        onboarding,
    },
    model::{Error, managed::ManagedSecret},
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
///
/// The process serves `/livez`, `/readyz` and `/metrics` throughout, and reconciles in terms:
/// with leader election, a term starts when this replica takes the Lease; it ends at shutdown,
/// when the Lease is lost, or when a watch has stalled (then the Lease is given up, so that a
/// standby replica whose watches work takes over, and this one competes again later). Each term
/// has its own caches and controllers: nothing stale survives into the next.
pub async fn run(client: Client, options: Options) -> Result<(), Error> {
    let health = Arc::new(Health::default());
    let metrics = crate::metrics::Metrics::new();
    let watches = Arc::new(Watches::default());
    if let Some(addr) = options.health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Startup(format!("listening on {addr} for health checks: {e}")))?;
        tokio::spawn(serve_http(listener, health.clone(), metrics.clone()));
    }
    loop {
        let lease = match &options.leader_election {
            None => None,
            Some(election) => {
                health.set(HealthState::Follower);
                match leader::acquire(&client, election).await {
                    Some(lease) => Some(lease),
                    None => {
                        info!("stopped before leading");
                        return Ok(());
                    }
                }
            }
        };
        let end = {
            let leading = lease.as_ref().map(|l| l.leading.clone());
            let term = Term {
                client: &client,
                options: &options,
                health: &health,
                metrics: &metrics,
                watches: &watches,
            };
            term.run(leading).await?
        };
        metrics.leader.set(0);
        metrics.observe(None);
        watches.clear();
        health.set_stalled(None);
        if let TermEnd::Stalled(message) = &end {
            // Not ready until it competes again: a replica that gave up leading for this
            // must not look like a healthy leader meanwhile.
            warn!(
                "giving up the leader lease: {message}; a standby replica leads meanwhile, this one competes again in {}s",
                STEPPED_DOWN.as_secs()
            );
            health.set_stalled(Some(format!("stepped down as leader: {message}")));
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        match end {
            TermEnd::Shutdown => {
                info!("stopped");
                return Ok(());
            }
            TermEnd::LostLease => warn!("lost the leader lease; waiting to lead again"),
            TermEnd::Stalled(_) => {
                // Leave the Lease to the others for a while before competing again.
                tokio::select! {
                    () = tokio::time::sleep(STEPPED_DOWN) => {}
                    () = terminated() => return Ok(()),
                }
                health.set_stalled(None);
            }
        }
    }
}

/// How long a leader whose watches stalled leaves the Lease to the others.
const STEPPED_DOWN: Duration = Duration::from_secs(LEASE_SECONDS * 3);

/// Why a term of reconciling ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TermEnd {
    Shutdown,
    LostLease,
    /// The watches stalled (what `/readyz` said).
    Stalled(String),
}

/// What one term of reconciling uses from the process.
struct Term<'a> {
    client: &'a Client,
    options: &'a Options,
    health: &'a Arc<Health>,
    metrics: &'a Arc<crate::metrics::Metrics>,
    watches: &'a Arc<Watches>,
}

impl Term<'_> {
    /// Builds the caches and controllers and runs them until shutdown, the loss of `leading`
    /// (when leader election is on) or, with leader election, a stalled watch.
    async fn run(
        self,
        leading: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<TermEnd, Error> {
        let controllers = self.controllers()?;
        let lost = async move {
            let Some(mut leading) = leading else {
                return std::future::pending().await;
            };
            while *leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    break;
                }
            }
        };
        let step_down = self.options.leader_election.is_some();
        let stalled = watch_progress(self.watches, self.health, self.metrics, step_down);
        Ok(tokio::select! {
            () = controllers => TermEnd::Shutdown,
            () = lost => TermEnd::LostLease,
            message = stalled => TermEnd::Stalled(message),
        })
    }

    /// The three controllers of a term, over caches of their own, as one future that ends at
    /// shutdown.
    fn controllers(&self) -> Result<impl std::future::Future<Output = ()> + use<>, Error> {
        let client = self.client;
        let watches = self.watches;
        let managed =
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let all = watcher::Config::default;

        // The cache keeps a summary of each managed Secret's data, not the data.
        let (secrets, secret_events) = reflect(
            watches,
            "managed Secrets",
            Api::<Secret>::all(client.clone()),
            managed.clone(),
            ManagedSecret::from,
        );
        let (crbs, crb_events) = reflect(
            watches,
            "ClusterRoleBindings",
            Api::<ClusterRoleBinding>::all(client.clone()),
            managed.clone(),
            keep,
        );
        let (rbs, rb_events) = reflect(
            watches,
            "RoleBindings",
            Api::<RoleBinding>::all(client.clone()),
            managed.clone(),
            keep,
        );
        let (roles, role_events) = reflect(
            watches,
            "Roles",
            Api::<Role>::all(client.clone()),
            managed.clone(),
            keep,
        );
        let (authorities, authority_events) = reflect(
            watches,
            "Authorities",
            Api::<Authority>::all(client.clone()),
            all(),
            keep,
        );
        let (cluster_authorities, cluster_authority_events) = reflect(
            watches,
            "ClusterAuthorities",
            Api::<ClusterAuthority>::all(client.clone()),
            all(),
            keep,
        );
        let (namespaces, namespace_events) = reflect(
            watches,
            "Namespaces",
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            all(),
            keep,
        );
        // The CSRs the controller made: a signature (or a denial) brings their Kubeconfig back.
        let csr_events = watch(
            Api::<PartialObjectMeta<CertificateSigningRequest>>::all(client.clone()),
            managed.clone(),
            "CertificateSigningRequests",
            watches,
        )
        .touched_objects();
        let config_map_events = watch(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            all(),
            "ConfigMaps",
            watches,
        )
        .touched_objects();
        // Every other Secret (a CA, a CA bundle, a kubeconfig an authority reads), metadata only.
        let unmanaged =
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY}"));
        let (secret_metadata, secret_meta_events) = reflect(
            watches,
            "other Secrets",
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            unmanaged,
            keep,
        );

        let (kubeconfigs, kubeconfig_events) = reflect(
            watches,
            "Kubeconfigs",
            Api::<Kubeconfig>::all(client.clone()),
            all(),
            keep,
        );
        let kubeconfig_events = kubeconfig_events.predicate_filter(not_status, Default::default());
        let controller = Controller::for_stream(kubeconfig_events, kubeconfigs.clone())
            .with_config(
                kube::runtime::controller::Config::default().concurrency(self.options.concurrency),
            );
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
            default_authority: self.options.default_authority.clone(),
            ca_cache: Default::default(),
            pending_csrs: Default::default(),
            own_writes: Default::default(),
            write_budgets: Default::default(),
            flagged: Default::default(),
            metrics: self.metrics.clone(),
        });

        self.metrics.observe(Some(kubeconfigs.clone()));
        let default = self.options.default_authority.clone();
        // An authority's own status (written by this controller) brings nothing back.
        let by_authority = {
            let (kubeconfigs, default) = (kubeconfigs.clone(), default.clone());
            let (store, seen) = (authorities.clone(), SpecChanges::default());
            move |a: Authority| {
                if !seen.changed(&a, store.get(&ObjectRef::from_obj(&a)).is_some()) {
                    return Vec::new();
                }
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
            let (store, seen) = (cluster_authorities.clone(), SpecChanges::default());
            move |a: ClusterAuthority| {
                if !seen.changed(&a, store.get(&ObjectRef::from_obj(&a)).is_some()) {
                    return Vec::new();
                }
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

        // ServiceAccounts that ask for a kubeconfig by annotation, and the Kubeconfigs made for
        // them (owned by the ServiceAccount).
        let (service_accounts, service_account_events) = reflect(
            watches,
            "ServiceAccounts",
            Api::<ServiceAccount>::all(client.clone()),
            all(),
            keep,
        );
        let onboarding = Controller::for_stream(service_account_events, service_accounts)
            .owns_stream(
                watch(
                    Api::<Kubeconfig>::all(client.clone()),
                    watcher::Config::default().labels(onboarding::SERVICE_ACCOUNT_LABEL),
                    "onboarded Kubeconfigs",
                    watches,
                )
                .touched_objects(),
            )
            .shutdown_on_signal()
            .run(
                onboarding::reconcile,
                |sa, error: &Error, _| {
                    warn!(serviceaccount = %format!("{}/{}", sa.namespace().unwrap_or_default(), sa.name_any()), reason = %error.reason(), "{error}");
                    Action::requeue(Duration::from_secs(5))
                },
                Arc::new(onboarding::Context {
                    client: client.clone(),
                    kubeconfigs: kubeconfigs.clone(),
                    recorder: Recorder::new(client.clone(), reporter.clone()),
                    default_authority: self.options.default_authority.clone(),
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
            watches.clone(),
        );
        let (generator_store, generator_events) = reflect(
            watches,
            "KubeconfigGenerators",
            Api::<KubeconfigGenerator>::all(client.clone()),
            all(),
            keep,
        );
        let generators = Controller::for_stream(generator_events, generator_store)
            .owns_stream(
                watch(
                    Api::<Kubeconfig>::all(client.clone()),
                    watcher::Config::default().labels(generator::GENERATOR_LABEL),
                    "generated Kubeconfigs",
                    watches,
                )
                .touched_objects(),
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

        // Anything labelled with a Kubeconfig's UID that changes is also a possible orphan.
        let (orphan_tx, orphans) = tokio::sync::mpsc::unbounded_channel();
        let suspect = |to: fn(&str, String) -> Candidate| {
            let tx = orphan_tx.clone();
            move |namespace: Option<String>, name: String| {
                let _ = tx.send(to(&namespace.unwrap_or_default(), name));
            }
        };
        let (crb_suspect, rb_suspect, role_suspect, copy_suspect) = (
            suspect(|_, name| Candidate::ClusterRoleBinding(name)),
            suspect(|ns, name| Candidate::RoleBinding(ns.into(), name)),
            suspect(|ns, name| Candidate::Role(ns.into(), name)),
            suspect(|ns, name| Candidate::Copy(ns.into(), name)),
        );
        let crb_events = crb_events.inspect_ok(move |b| crb_suspect(None, b.name_any()));
        let rb_events = rb_events.inspect_ok(move |b| rb_suspect(b.namespace(), b.name_any()));
        let role_events =
            role_events.inspect_ok(move |r| role_suspect(r.namespace(), r.name_any()));
        let secret_events = secret_events
            .inspect_ok(move |s| copy_suspect(Some(s.namespace.clone()), s.name.clone()));
        let sweeper = sweep_orphans(context.clone(), orphans);

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
        let synced = lead(&context, self.health);
        Ok(async move {
            // The sweeper never ends: the term ends with the controllers.
            tokio::select! {
                _ = futures::future::join(controllers, synced) => {}
                () = sweeper => {}
            }
        })
    }
}

/// Removes orphans: every candidate once the caches are filled, then those that change.
async fn sweep_orphans(
    context: Arc<Context>,
    mut suspects: tokio::sync::mpsc::UnboundedReceiver<Candidate>,
) {
    context.caches_ready().await;
    let mut batch = orphans::all(&context);
    loop {
        if let Err(e) = orphans::sweep(&context, std::mem::take(&mut batch)).await {
            warn!("removing orphaned bindings and copies: {e}");
        }
        let Some(first) = suspects.recv().await else {
            return;
        };
        batch.push(first);
        while let Ok(more) = suspects.try_recv() {
            batch.push(more);
        }
    }
}

/// Every second: counts the stalled watches (metric, `/readyz`) and, when `step_down`, ends
/// as soon as one has stalled, with what it reported. Without leader election there is no one
/// to hand over to: the watches keep retrying on their own, and the stall is reported until
/// they recover.
async fn watch_progress(
    watches: &Watches,
    health: &Health,
    metrics: &crate::metrics::Metrics,
    step_down: bool,
) -> String {
    metrics.watches_stalled.set(0);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stalled = watches.stalled(std::time::Instant::now(), watch::STALL_AFTER);
        metrics.watches_stalled.set(stalled.len() as i64);
        if stalled.is_empty() {
            health.set_stalled(None);
            continue;
        }
        let names: Vec<String> = stalled
            .iter()
            .map(|(name, error)| format!("{name} ({error})"))
            .collect();
        let message = format!(
            "watches failing for {}s or more without progress: {}",
            watch::STALL_AFTER.as_secs(),
            names.join("; ")
        );
        warn!("{message}");
        health.set_stalled(Some(message.clone()));
        if step_down {
            return message;
        }
    }
}

/// Marks this replica as leader: ready once its caches are filled (the returned future, which
/// ends with the term).
fn lead(
    context: &Arc<Context>,
    health: &Arc<Health>,
) -> impl std::future::Future<Output = ()> + use<> {
    context.metrics.leader.set(1);
    health.set(HealthState::Syncing);
    let (context, health) = (context.clone(), health.clone());
    async move {
        context.caches_ready().await;
        health.set(HealthState::Synced);
    }
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn terminated() {
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
pub struct Health {
    state: std::sync::atomic::AtomicU8,
    /// Which watches have stalled, while any has.
    stalled: std::sync::Mutex<Option<String>>,
}

impl Health {
    fn set(&self, state: HealthState) {
        self.state
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_stalled(&self, message: Option<String>) {
        if let Ok(mut stalled) = self.stalled.lock() {
            *stalled = message;
        }
    }

    fn answer(&self) -> (&'static str, String) {
        let unavailable = "503 Service Unavailable";
        let state = self.state.load(std::sync::atomic::Ordering::Relaxed);
        if state == HealthState::Follower as u8 {
            return ("200 OK", "ok: follower, idle".into());
        }
        if let Some(stalled) = self.stalled.lock().ok().and_then(|s| s.clone()) {
            return (unavailable, format!("not serving: {stalled}"));
        }
        match state {
            3 => ("200 OK", "ok: leader, caches synced".into()),
            2 => (unavailable, "leader, caches are not synced yet".into()),
            _ => (unavailable, "starting".into()),
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

fn error_policy(kc: Arc<Kubeconfig>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::metrics::Metrics::count(&ctx.metrics.failures, error.reason().as_str());
    warn!(kubeconfig = %format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any()), reason = %error.reason(), "{error}");
    Action::requeue(error.retry_after())
}

/// The objects (namespace, name) an authority reads, of one kind.
type ReadsFn = fn(&AuthorityConfig, Option<&str>) -> Vec<(String, String)>;

/// The Kubeconfig an object's annotation names.
fn owner_of(annotation: Option<&String>) -> Option<ObjectRef<Kubeconfig>> {
    let (namespace, name) = annotation?.split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The generation each object was last seen at: tells a change of its spec (or its coming or
/// going) from a change of its status alone.
#[derive(Default)]
struct SpecChanges(std::sync::Mutex<std::collections::HashMap<String, Option<i64>>>);

impl SpecChanges {
    /// Whether `object` (`present`: still in the cache, so not deleted) changed more than its
    /// status since last seen.
    fn changed<K: kube::Resource>(&self, object: &K, present: bool) -> bool {
        let key = object.meta().uid.clone().unwrap_or_default();
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if !present {
            seen.remove(&key);
            return true;
        }
        let generation = object.meta().generation;
        seen.insert(key, generation) != Some(generation)
    }
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
                    (code, text, body)
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
