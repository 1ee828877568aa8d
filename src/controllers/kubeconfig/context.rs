//! What every reconcile of a Kubeconfig shares: the client, the caches the watches keep, the
//! parsed CAs, and the per-object write budget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{events::Reporter, reflector::Store},
};
use kubeconfig_authority_pki::CertificateAuthority;

use crate::{
    api::{Authority, AuthorityRef, ClusterAuthority, KUBECONFIG_UID_LABEL, Kubeconfig},
    client::{self, cluster::Cluster, filled},
    model::{Error, Reason, Result, WRITE_WINDOW, WRITES_PER_WINDOW, Written, managed},
};
use kube::runtime::events::EventType;

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
    /// Secrets labelled as managed by this controller, without their data, by name and by
    /// Kubeconfig UID (see [`Context::secrets_of`]).
    pub secrets: Arc<managed::ManagedSecrets>,
    /// The controller's own cluster: where bindings go unless an authority names a target.
    pub local: Arc<Cluster>,
    /// The authorities' target clusters.
    pub targets: super::targets::Targets,
    /// The metadata of every Secret (to know a CA Secret's resourceVersion without reading it).
    pub secret_metadata: Store<PartialObjectMeta<Secret>>,
    /// The labels of every namespace (for the authorities' namespace selectors).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Used by Kubeconfigs that name no authority.
    pub default_authority: Option<AuthorityRef>,
    pub ca_cache: Mutex<HashMap<SecretKey, (String, Arc<CertificateAuthority>)>>,
    /// CSRs waiting for their signer, by Kubeconfig UID (the key stays in memory; after a
    /// restart a new request is made).
    pub pending_csrs: Mutex<HashMap<String, crate::model::credential::PendingCsr>>,
    /// The managed Secrets as the controller last wrote them.
    pub own_writes: Arc<managed::OwnWrites>,
    /// How often each Kubeconfig's objects were written lately (see [`Context::spend`]).
    pub write_budgets: Mutex<WriteBudgets>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The authority conditions this process wrote (see [`authority::report_ca_key`]).
    pub flagged: Mutex<std::collections::HashSet<String>>,
    /// RSA keys generated ahead.
    pub keys: Arc<super::keys::KeyPool>,
    /// The status last written to each Kubeconfig, until the watch brings it.
    pub own_status: Arc<super::own_status::OwnStatus>,
    /// When each Ready Kubeconfig is looked at next.
    pub renewals: Arc<super::renewals::Renewals>,
}

/// The write budgets of the Kubeconfigs written lately.
#[derive(Debug)]
pub struct WriteBudgets {
    by_object: HashMap<(String, Written), kubeconfig_authority_pki::WriteBudget>,
    /// The size at which the budgets spent before the window are dropped next.
    prune_at: usize,
}

impl Default for WriteBudgets {
    fn default() -> Self {
        Self {
            by_object: HashMap::new(),
            prune_at: Self::PRUNE_AT_LEAST,
        }
    }
}

impl WriteBudgets {
    const PRUNE_AT_LEAST: usize = 4096;

    /// Drops the budgets with no write in the window, once their number has doubled since the
    /// last time: a burst of ten thousand new Kubeconfigs, all inside the window, made a
    /// prune on every write scan every budget (most of the controller's CPU in `make bench`).
    fn prune(&mut self, now: time::OffsetDateTime) {
        if self.by_object.len() < self.prune_at {
            return;
        }
        self.by_object
            .retain(|_, b| !b.is_spent_before(now, WRITE_WINDOW));
        self.prune_at = (2 * self.by_object.len()).max(Self::PRUNE_AT_LEAST);
    }
}

impl Context {
    /// The cached managed Secrets of the Kubeconfig `uid` that `keep` selects.
    pub fn secrets_of(
        &self,
        uid: &str,
        keep: impl Fn(&managed::ManagedSecret) -> bool,
    ) -> Vec<Arc<managed::ManagedSecret>> {
        self.secrets.of(uid, keep)
    }

    /// Takes one write of `what` from the Kubeconfig's budget, or says (as an error the error
    /// policy turns into a requeue) when the next one is allowed.
    pub fn spend(&self, uid: &str, what: Written) -> Result<()> {
        let now = time::OffsetDateTime::now_utc();
        let Ok(mut budgets) = self.write_budgets.lock() else {
            return Ok(());
        };
        budgets.prune(now);
        budgets
            .by_object
            .entry((uid.to_string(), what))
            .or_default()
            .take(now, WRITES_PER_WINDOW, WRITE_WINDOW)
            .map_err(|until| Error::RateLimited { what, until })
    }

    /// Publishes an event about a Kubeconfig.
    pub async fn publish(
        &self,
        kc: &Kubeconfig,
        type_: EventType,
        reason: Reason,
        note: &str,
        action: &str,
    ) {
        let reference = kube::Resource::object_ref(kc, &());
        client::publish(
            &self.client,
            &self.reporter,
            &reference,
            type_,
            reason.as_str(),
            note,
            action,
        )
        .await;
    }

    /// Writes a managed Secret (a Kubeconfig's or a copy) by server-side apply, answered with
    /// its metadata only (the data just sent need not come back), and remembers the write so
    /// that its watch event brings nothing back.
    pub async fn write_managed_secret(&self, namespace: &str, secret: &Secret) -> kube::Result<()> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let written = client::apply(&self.client, Some(namespace), name, secret).await?;
        self.own_writes.record(namespace, name, written);
        Ok(())
    }

    /// [`Self::write_managed_secret`] for a Secret that must not exist yet, by a plain create:
    /// `Ok(false)`, and nothing written, when one does (see [`client::create`]).
    pub async fn create_managed_secret(
        &self,
        namespace: &str,
        secret: &Secret,
    ) -> kube::Result<bool> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let Some(created) = client::create(&self.client, Some(namespace), secret).await? else {
            return Ok(false);
        };
        self.own_writes.record(namespace, name, created);
        Ok(true)
    }

    /// Makes the fields the create of a managed Secret wrote the controller's applied ones
    /// (`patch`: [`client::adoption_patch`]), so that the apply that follows can drop one.
    pub async fn adopt_managed_secret(
        &self,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> kube::Result<()> {
        let written =
            client::merge_patch::<Secret>(&self.client, Some(namespace), name, patch).await?;
        self.own_writes.record(namespace, name, written);
        Ok(())
    }

    /// Whether Secret `namespace/name` is in the way of the Kubeconfig `uid`: not one of the
    /// managed Secrets the cache holds for it (`observed`), and existing without its UID label.
    /// Such a Secret is never overwritten.
    pub async fn foreign_secret(
        &self,
        observed: &[Arc<managed::ManagedSecret>],
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<bool> {
        if observed
            .iter()
            .any(|o| o.namespace == namespace && o.name == name)
        {
            return Ok(false);
        }
        let live = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_metadata_opt(name)
            .await
            .map_err(Error::kube(format!("reading Secret {namespace}/{name}")))?;
        Ok(live
            .is_some_and(|s| s.labels().get(KUBECONFIG_UID_LABEL).map(String::as_str) != Some(uid)))
    }

    /// Waits until every cache has been filled once, so that a reconcile never mistakes a cache
    /// still loading for an object that does not exist.
    pub async fn caches_ready(&self) {
        filled(&self.authorities).await;
        filled(&self.cluster_authorities).await;
        // An error means the watch is gone: the controller is shutting down.
        let _ = self.secrets.filled().wait_for(|filled| *filled).await;
        self.local.filled().await;
        filled(&self.namespaces).await;
        filled(&self.secret_metadata).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_pruned_when_their_number_doubled_not_on_every_write() {
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let mut budgets = WriteBudgets::default();
        let spend = |budgets: &mut WriteBudgets, i: usize, now| {
            budgets.prune(now);
            budgets
                .by_object
                .entry((format!("uid-{i}"), Written::Secret))
                .or_default()
                .take(now, WRITES_PER_WINDOW, WRITE_WINDOW)
                .unwrap();
        };
        // A burst inside the window: nothing can be dropped, and the next prune waits until
        // the number has doubled.
        for i in 0..5000 {
            spend(&mut budgets, i, t0);
        }
        assert_eq!(budgets.by_object.len(), 5000);
        assert_eq!(budgets.prune_at, 2 * WriteBudgets::PRUNE_AT_LEAST);
        // After the window, the next prune drops every spent budget.
        let later = t0 + WRITE_WINDOW;
        for i in 5000..8192 {
            spend(&mut budgets, i, later);
        }
        assert_eq!(budgets.by_object.len(), 8192);
        spend(&mut budgets, 9000, later);
        assert_eq!(budgets.by_object.len(), 8192 - 5000 + 1);
        assert_eq!(
            budgets.prune_at,
            WriteBudgets::PRUNE_AT_LEAST.max(2 * (8192 - 5000))
        );
    }
}
