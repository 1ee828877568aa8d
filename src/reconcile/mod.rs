//! Reconcilers, one module per resource: observe -> decide (pure) -> apply -> report.

pub mod authority;
pub mod credential;
pub mod distribution;
pub mod generator;
pub mod kubeconfig;
pub mod managed;
pub mod onboarding;
pub mod orphans;
pub mod policy;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Secret},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::controller::Action,
    runtime::{
        events::{Recorder, Reporter},
        reflector::Store,
    },
};
use kubeconfig_authority_pki::CertificateAuthority;

use crate::api::{Authority, AuthorityRef, ClusterAuthority, FIELD_MANAGER, Kubeconfig};

/// A Secret's (namespace, name).
pub type SecretKey = (String, String);

/// What every reconcile shares: the client, the caches the controller's watches keep, and the
/// parsed CAs (parsing an RSA key costs more than signing with it).
pub struct Context {
    pub client: Client,
    /// Who the Kubeconfig controller's events say published them.
    pub reporter: Reporter,
    pub kubeconfigs: Store<Kubeconfig>,
    pub authorities: Store<Authority>,
    pub cluster_authorities: Store<ClusterAuthority>,
    /// Secrets labelled as managed by this controller, without their data.
    pub secrets: Store<managed::ManagedSecret>,
    pub cluster_role_bindings: Store<ClusterRoleBinding>,
    pub role_bindings: Store<RoleBinding>,
    /// Roles the controller writes (ServiceAccount self-impersonation).
    pub roles: Store<Role>,
    /// The metadata of every Secret (to know a CA Secret's resourceVersion without reading it).
    pub secret_metadata: Store<PartialObjectMeta<Secret>>,
    /// The labels of every namespace (for the authorities' namespace selectors).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Used by Kubeconfigs that name no authority.
    pub default_authority: Option<AuthorityRef>,
    pub ca_cache: Mutex<HashMap<SecretKey, (String, Arc<CertificateAuthority>)>>,
    /// CSRs waiting for their signer, by Kubeconfig UID (the key stays in memory; after a
    /// restart a new request is made).
    pub pending_csrs: Mutex<HashMap<String, credential::PendingCsr>>,
    /// The managed Secrets as the controller last wrote them.
    pub own_writes: Arc<managed::OwnWrites>,
    /// How often each Kubeconfig's objects were written lately (see [`Context::spend`]).
    pub write_budgets: Mutex<HashMap<(String, Written), kubeconfig_authority_pki::WriteBudget>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The authority conditions this process wrote (see [`authority::report_ca_key`]).
    pub flagged: Mutex<std::collections::HashSet<String>>,
}

/// What a reconcile writes, each bounded on its own by [`Context::spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Written {
    Secret,
    Bindings,
    Copies,
}

/// At most this many writes of one kind per Kubeconfig in [`WRITE_WINDOW`], whatever the input
/// (a renewal schedule, someone deleting the Secret in a loop, another controller fighting over
/// a binding). Issuance and three repairs fit in one window.
pub const WRITES_PER_WINDOW: usize = 5;
pub const WRITE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Context {
    /// Takes one write of `what` from the Kubeconfig's budget, or says (as an error the error
    /// policy turns into a requeue) when the next one is allowed.
    pub fn spend(&self, uid: &str, what: Written) -> Result<()> {
        let now = time::OffsetDateTime::now_utc();
        let Ok(mut budgets) = self.write_budgets.lock() else {
            return Ok(());
        };
        if budgets.len() > 4096 {
            budgets.retain(|_, b| !b.is_spent_before(now, WRITE_WINDOW));
        }
        budgets
            .entry((uid.to_string(), what))
            .or_default()
            .take(now, WRITES_PER_WINDOW, WRITE_WINDOW)
            .map_err(|until| Error::RateLimited { what, until })
    }

    /// A recorder for one event. kube-runtime's shared Recorder keeps every event of the last
    /// six minutes to count repeats, and scans them all under a lock on each publish: at ten
    /// thousand Kubeconfigs that was a ninth of the controller's CPU (`make bench`). The
    /// Kubeconfig controller publishes once per change, never a repeat, so it needs no count.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    /// Writes a managed Secret (a Kubeconfig's or a copy) by server-side apply, answered with
    /// its metadata only (the data just sent need not come back), and remembers the write so
    /// that its watch event brings nothing back.
    pub async fn write_managed_secret(&self, namespace: &str, secret: &Secret) -> kube::Result<()> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let written = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .patch_metadata(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(secret),
            )
            .await?;
        self.own_writes
            .record(namespace, name, written.metadata.resource_version);
        Ok(())
    }

    /// Waits until every cache has been filled once, so that a reconcile never mistakes a cache
    /// still loading for an object that does not exist.
    pub async fn caches_ready(&self) {
        filled(&self.authorities).await;
        filled(&self.cluster_authorities).await;
        filled(&self.secrets).await;
        filled(&self.cluster_role_bindings).await;
        filled(&self.role_bindings).await;
        filled(&self.roles).await;
        filled(&self.namespaces).await;
        filled(&self.secret_metadata).await;
    }
}

/// Waits until a store has been filled once. A waiter registered before the fill is not
/// always woken (observed with two controllers sharing stores), so the wait is retried.
pub async fn filled<K>(store: &Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(200),
            store.wait_until_ready(),
        )
        .await
        {
            // An error means the watch was dropped: the controller is shutting down.
            Ok(_) => return,
            Err(_) => continue,
        }
    }
}

/// The outcome of kube-runtime's finalizer helper as a reconcile result. A finalizer that was
/// removed already by an earlier reconcile of the same deletion (the cache lagged) means the
/// object is gone and nothing is left to do.
pub fn finalizer_outcome(
    result: std::result::Result<Action, kube::runtime::finalizer::Error<Error>>,
) -> Result<Action> {
    use kube::runtime::finalizer::Error as FinalizerError;
    match result {
        Ok(action) => Ok(action),
        Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => Err(e),
        Err(FinalizerError::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        Err(other) => Err(Error::Finalizer(other.to_string())),
    }
}

/// A Kubernetes timestamp (seconds) from a `time` one.
pub fn to_time(t: time::OffsetDateTime) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Errors that stop a reconcile and are retried with backoff: the API server failed or refused
/// a request. Problems a person must fix (a missing CA, a conflicting Secret) are not errors:
/// they are reported in status and events, and the object waits for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0}")]
    Startup(String),
    #[error(
        "{what:?} written {WRITES_PER_WINDOW} times within a minute already; the next write waits until {until}"
    )]
    RateLimited {
        what: Written,
        until: time::OffsetDateTime,
    },
}

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// A short machine-readable reason, for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "APIError",
            Error::MissingMetadata(_) => "InvalidObject",
            Error::Finalizer(_) => "FinalizerError",
            Error::Startup(_) => "StartupError",
            Error::RateLimited { .. } => "RateLimited",
        }
    }

    /// When to try again: at the time a rate limit names, else after a short backoff.
    pub fn retry_after(&self) -> std::time::Duration {
        match self {
            Error::RateLimited { until, .. } => {
                std::time::Duration::try_from(*until - time::OffsetDateTime::now_utc())
                    .unwrap_or_default()
                    .max(std::time::Duration::from_millis(100))
            }
            _ => std::time::Duration::from_secs(5),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
