//! A cluster the controller binds roles in: the controller's own, or an authority's target.
//! Its client, and the caches of the labelled Roles and bindings it wrote there.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::{Client, runtime::reflector::Store};

use super::watch::{Watches, filled};

pub struct Cluster {
    pub client: Client,
    pub cluster_role_bindings: Store<ClusterRoleBinding>,
    pub role_bindings: Store<RoleBinding>,
    /// Roles the controller writes (ServiceAccount self-impersonation).
    pub roles: Store<Role>,
    /// A target's own watches (the controller's cluster reports to the process's health).
    pub watches: Option<Arc<Watches>>,
    /// How to name it in messages: "the controller's cluster" or "target cluster <server>".
    pub described: String,
}

impl Cluster {
    /// Waits until every cache has been filled once; `false` when a watch is gone first (a
    /// target's watches were stopped: its caches will never be filled).
    pub async fn filled(&self) -> bool {
        filled(&self.cluster_role_bindings).await
            && filled(&self.role_bindings).await
            && filled(&self.roles).await
    }

    /// Waits up to `timeout` for the caches; says whether they are filled.
    pub async fn filled_within(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.filled())
            .await
            .unwrap_or(false)
    }

    /// Why a target cannot be reached now: the last error of a watch that has failed since
    /// its last progress. `None` for the controller's own cluster.
    pub fn unreachable(&self) -> Option<String> {
        let watches = self.watches.as_ref()?;
        let failing = watches.stalled(Instant::now(), Duration::ZERO);
        let (_, error) = failing.into_iter().next()?;
        Some(error)
    }
}
