//! One term of leadership: the caches and the three controllers built anew, run until
//! shutdown, the loss of the Lease, or stalled watches.

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
        Controller, WatchStreamExt, controller::Action, events::Reporter, reflector::ObjectRef,
        watcher,
    },
};
use tracing::{info, warn};

use crate::{
    api::{
        Authority, AuthorityKind, ClusterAuthority, KUBECONFIG_ANNOTATION, Kubeconfig,
        KubeconfigGenerator, MANAGED_BY, MANAGED_BY_LABEL,
    },
    client::{
        cluster::Cluster,
        watch::{self, NoPause, Watches, keep, reflect, reflect_managed, reflect_seen, watch},
    },
    controllers::{
        generator,
        kubeconfig::{
            self, Context,
            dependents::{Dependents, SpecChanges},
            orphans::{self, Candidate},
            targets,
        },
        onboarding,
    },
    model::{Error, authority, labels, managed::ManagedSecrets},
};

use super::{
    Options, TermEnd,
    caches::Changes,
    http::{Health, HealthState},
};

/// What one term of reconciling uses from the process.
pub struct Term<'a> {
    pub client: &'a Client,
    pub options: &'a Options,
    pub health: &'a Arc<Health>,
    pub metrics: &'a Arc<crate::metrics::Metrics>,
    pub watches: &'a Arc<Watches>,
}

impl Term<'_> {
    /// Builds the caches and controllers and runs them until shutdown, the loss of `leading`
    /// (when leader election is on) or, with leader election, a stalled watch.
    pub async fn run(
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
            end = stalled => end,
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

        // The cache keeps a summary of each managed Secret's data, not the data, and an
        // index of them by Kubeconfig.
        let secrets = Arc::new(ManagedSecrets::default());
        let secret_events = reflect_managed(
            watches,
            Api::<Secret>::all(client.clone()),
            managed.clone(),
            secrets.clone(),
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

        // A Ready Kubeconfig waits for its next look here; a deleted one waits no longer.
        let renewals = Arc::new(kubeconfig::renewals::Renewals::default());
        // Only what is not the status brings a Kubeconfig back.
        let changes = Arc::new(Changes::default());
        // The status last written to each Kubeconfig, until this watch brings it.
        let own_status = Arc::new(kubeconfig::own_status::OwnStatus::default());
        let (kubeconfigs, kubeconfig_events) = {
            let (renewals, changes, own_status) =
                (renewals.clone(), changes.clone(), own_status.clone());
            reflect_seen(
                watches,
                "Kubeconfigs",
                Api::<Kubeconfig>::all(client.clone()),
                all(),
                keep,
                move |event| {
                    changes.saw(event);
                    own_status.saw(event);
                    if let watcher::Event::Delete(kc) = event {
                        renewals.forget(kc);
                    }
                },
            )
        };
        let kubeconfig_events =
            kubeconfig_events.try_filter(move |kc| futures::future::ready(changes.changed(kc)));
        let controller = Controller::for_stream(kubeconfig_events, kubeconfigs.clone())
            .trigger_backoff(NoPause)
            .with_config(
                kube::runtime::controller::Config::default().concurrency(self.options.concurrency),
            );
        let reporter = Reporter {
            controller: "kubeconfig-authority".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        // Target clusters are watched from the first Kubeconfig that needs one.
        let (targets, target_changes) = kubeconfig::targets::Targets::new(self.options.concurrency);
        let target_changes = futures::stream::unfold(target_changes, |mut rx| async move {
            rx.recv().await.map(|owner| (owner, rx))
        });
        let context = Arc::new(Context {
            reporter: reporter.clone(),
            client: client.clone(),
            kubeconfigs: kubeconfigs.clone(),
            authorities: authorities.clone(),
            cluster_authorities: cluster_authorities.clone(),
            secrets: secrets.clone(),
            local: Arc::new(Cluster {
                client: client.clone(),
                cluster_role_bindings: crbs,
                role_bindings: rbs,
                roles,
                watches: None,
                described: "the controller's cluster".into(),
            }),
            targets,
            namespaces: namespaces.clone(),
            secret_metadata,
            default_authority: self.options.default_authority.clone(),
            ca_cache: Default::default(),
            pending_csrs: Default::default(),
            own_writes: Default::default(),
            write_budgets: Default::default(),
            flagged: Default::default(),
            keys: Default::default(),
            renewals: renewals.clone(),
            own_status,
            metrics: self.metrics.clone(),
        });

        self.metrics.observe(Some(kubeconfigs.clone()));
        // Which Kubeconfigs a change of another object brings back (an authority's own status,
        // written by this controller, brings nothing back).
        let dependents = Dependents {
            kubeconfigs: kubeconfigs.clone(),
            authorities: authorities.clone(),
            cluster_authorities: cluster_authorities.clone(),
            default: self.options.default_authority.clone(),
        };
        let by_authority = {
            let (d, seen) = (dependents.clone(), SpecChanges::default());
            move |a: Authority| {
                let present = d.authorities.get(&ObjectRef::from_obj(&a)).is_some();
                if !seen.changed(&a, present) {
                    return Vec::new();
                }
                d.users_of(
                    AuthorityKind::Authority,
                    a.namespace().as_deref(),
                    &a.name_any(),
                )
            }
        };
        let by_cluster_authority = {
            let (d, seen) = (dependents.clone(), SpecChanges::default());
            move |a: ClusterAuthority| {
                let present = d
                    .cluster_authorities
                    .get(&ObjectRef::from_obj(&a))
                    .is_some();
                if !seen.changed(&a, present) {
                    return Vec::new();
                }
                d.users_of(AuthorityKind::ClusterAuthority, None, &a.name_any())
            }
        };
        let by_secret = {
            let d = dependents.clone();
            move |s: PartialObjectMeta<Secret>| {
                d.of_secret(&s.namespace().unwrap_or_default(), &s.name_any())
            }
        };
        let by_config_map = {
            let d = dependents.clone();
            move |c: PartialObjectMeta<ConfigMap>| {
                d.of_config_map(&c.namespace().unwrap_or_default(), &c.name_any())
            }
        };
        let by_namespace =
            move |n: PartialObjectMeta<Namespace>| dependents.of_namespace(&n.name_any());

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
            .trigger_backoff(NoPause)
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
                    reporter: reporter.clone(),
                    default_authority: self.options.default_authority.clone(),
                }),
            )
            .for_each(|result| log_failure("onboarding", result));

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
        // Namespaces entering or leaving a selector: the one Namespace watch serves both.
        let namespace_changed = generator_context.trigger();
        let namespace_events = namespace_events.inspect_ok(move |_| namespace_changed());
        let generators = Controller::for_stream(generator_events, generator_store)
            .trigger_backoff(NoPause)
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
            .for_each(|result| log_failure("generator", result));

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
                    // Logged and counted by the watch itself.
                    Err(_) => None,
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
            // Objects in target clusters name their Kubeconfig.
            .reconcile_on(target_changes)
            .reconcile_on(renewals.stream())
            .watches_stream(authority_events, by_authority)
            .watches_stream(cluster_authority_events, by_cluster_authority)
            .watches_stream(secret_meta_events, by_secret)
            .watches_stream(config_map_events, by_config_map)
            .watches_stream(namespace_events, by_namespace)
            .shutdown_on_signal()
            .run(kubeconfig::reconcile, error_policy, context.clone())
            .for_each(|result| log_failure("reconcile", result));

        let controllers = futures::future::join3(kubeconfig_controller, onboarding, generators);
        let synced = lead(&context, self.health);
        let pruned = context.clone();
        Ok(async move {
            // The sweeper never ends: the term ends with the controllers.
            tokio::select! {
                _ = futures::future::join(controllers, synced) => {}
                () = sweeper => {}
                () = prune_targets(pruned) => {}
            }
        })
    }
}

/// Logs what a controller's run reports, but for what is logged where it happens: an object
/// gone before its reconcile, and a watch's error (each watch logs and counts its own, see
/// [`watch`]; during an outage a dozen of them fail every few seconds).
fn log_failure<K, E>(
    what: &str,
    result: Result<
        (kube::runtime::reflector::ObjectRef<K>, Action),
        kube::runtime::controller::Error<E, watcher::Error>,
    >,
) -> futures::future::Ready<()>
where
    K: kube::Resource,
    E: std::error::Error + 'static,
{
    use kube::runtime::controller::Error;
    match result {
        Ok(_) | Err(Error::ObjectNotFound(_) | Error::QueueError(_)) => {}
        Err(other) => warn!("{what} failed: {other}"),
    }
    futures::future::ready(())
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

/// Every 30 s: stops watching the target clusters no authority names any more, and reports
/// the others in the metrics and in their authorities' status (reachable or not, last
/// contact).
async fn prune_targets(context: Arc<Context>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let named: std::collections::HashSet<_> = context
            .authorities
            .state()
            .iter()
            .filter_map(|a| authority::target_of(&a.spec.config, a.namespace().as_deref()))
            .chain(
                context
                    .cluster_authorities
                    .state()
                    .iter()
                    .filter_map(|a| authority::target_of(&a.spec.config, None)),
            )
            .collect();
        context.targets.retain(|key| named.contains(key));
        let contacts = context.targets.contacts();
        context.metrics.observe_targets(&contacts);
        targets::report(&context, &contacts).await;
    }
}

/// Every second: ends the term when watches froze after an API server recovery (a new term
/// starts at once, keeping the Lease); counts the stalled watches (metric, `/readyz`) and,
/// when `step_down`, ends as soon as one has stalled. Without leader election there is no one
/// to hand over to: the watches keep retrying on their own, and the stall is reported until
/// they recover.
async fn watch_progress(
    watches: &Watches,
    health: &Health,
    metrics: &crate::metrics::Metrics,
    step_down: bool,
) -> TermEnd {
    metrics.watches_stalled.set(0);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = std::time::Instant::now();
        let frozen = watches.frozen(now, watch::FROZEN_AFTER);
        if !frozen.is_empty() {
            return TermEnd::Restart(format!(
                "watches not listing again {}s after the API server came back: {}",
                watch::FROZEN_AFTER.as_secs(),
                frozen.join(", ")
            ));
        }
        let stalled = watches.stalled(now, watch::STALL_AFTER);
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
            return TermEnd::Stalled(message);
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

fn error_policy(kc: Arc<Kubeconfig>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::metrics::Metrics::count(&ctx.metrics.failures, error.reason().as_str());
    warn!(kubeconfig = %format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any()), reason = %error.reason(), "{error}");
    Action::requeue(error.retry_after())
}

/// The Kubeconfig an object's annotation names.
fn owner_of(annotation: Option<&String>) -> Option<ObjectRef<Kubeconfig>> {
    let (namespace, name) = labels::owner_of(annotation?)?;
    Some(ObjectRef::new(name).within(namespace))
}
