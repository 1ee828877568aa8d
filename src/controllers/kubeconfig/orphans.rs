//! What a Kubeconfig made outside the garbage collector's reach (ClusterRoleBindings,
//! RoleBindings, Roles, copies of its Secret) carries its UID as a label; its finalizer removes
//! them. Should the object go without that cleanup (a controller that was not running when a
//! finalizer was forced off, an old version), they are orphans: removed at the start of every
//! term and within seconds of any change to them.

use std::collections::HashSet;

use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};
use tracing::info;

use super::Context;
use crate::api::{KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig};
use crate::{
    client::{self},
    model::{Error, Result},
};

/// An object that may be an orphan, by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Candidate {
    ClusterRoleBinding(String),
    RoleBinding(String, String),
    Role(String, String),
    /// A Secret in another namespace than its Kubeconfig's.
    Copy(String, String),
}

/// The candidate's UID label and owner annotation, from the caches (`None`: not cached, gone).
fn cached(ctx: &Context, candidate: &Candidate) -> Option<(String, Option<String>)> {
    let from = |labels: &std::collections::BTreeMap<String, String>,
                annotations: &std::collections::BTreeMap<String, String>| {
        Some((
            labels.get(KUBECONFIG_UID_LABEL)?.clone(),
            annotations.get(KUBECONFIG_ANNOTATION).cloned(),
        ))
    };
    match candidate {
        Candidate::ClusterRoleBinding(name) => {
            let b = ctx.local.cluster_role_bindings.get(&ObjectRef::new(name))?;
            from(b.labels(), b.annotations())
        }
        Candidate::RoleBinding(ns, name) => {
            let b = ctx
                .local
                .role_bindings
                .get(&ObjectRef::new(name).within(ns))?;
            from(b.labels(), b.annotations())
        }
        Candidate::Role(ns, name) => {
            let r = ctx.local.roles.get(&ObjectRef::new(name).within(ns))?;
            from(r.labels(), r.annotations())
        }
        Candidate::Copy(ns, name) => {
            let s = ctx.secrets.get(ns, name)?;
            let owner = s.kubeconfig.clone()?;
            // The Kubeconfig's own Secret is the garbage collector's (ownerReference).
            if owner
                .split_once('/')
                .is_some_and(|(owner_ns, _)| owner_ns == ns)
            {
                return None;
            }
            Some((s.kubeconfig_uid?.to_string(), Some(owner)))
        }
    }
}

/// Every candidate the caches hold.
pub fn all(ctx: &Context) -> Vec<Candidate> {
    let ns = |o: Option<String>| o.unwrap_or_default();
    let crbs = ctx.local.cluster_role_bindings.state();
    let rbs = ctx.local.role_bindings.state();
    let roles = ctx.local.roles.state();
    let secrets = ctx.secrets.all();
    crbs.iter()
        .map(|b| Candidate::ClusterRoleBinding(b.name_any()))
        .chain(
            rbs.iter()
                .map(|b| Candidate::RoleBinding(ns(b.namespace()), b.name_any())),
        )
        .chain(
            roles
                .iter()
                .map(|r| Candidate::Role(ns(r.namespace()), r.name_any())),
        )
        .chain(
            secrets
                .iter()
                .map(|s| Candidate::Copy(s.namespace.clone(), s.name.clone())),
        )
        .collect()
}

/// Removes the candidates whose Kubeconfig no longer exists. The caches say which look
/// orphaned; the live Kubeconfig is asked before anything is deleted (a cache can lag).
pub async fn sweep(ctx: &Context, candidates: Vec<Candidate>) -> Result<usize> {
    // Every managed Secret's change is a candidate, so the common answer (its Kubeconfig is
    // cached) comes from one lookup by the owner it names; the UIDs of every cached
    // Kubeconfig are gathered only for a candidate that lookup does not clear.
    let mut known: Option<HashSet<String>> = None;
    let mut removed = 0;
    for candidate in candidates {
        let Some((uid, owner)) = cached(ctx, &candidate) else {
            continue;
        };
        let named = owner
            .as_deref()
            .and_then(|o| o.split_once('/'))
            .and_then(|(ns, name)| ctx.kubeconfigs.get(&ObjectRef::new(name).within(ns)))
            .is_some_and(|kc| kc.uid().as_deref() == Some(uid.as_str()));
        let cached_owner = named
            || known
                .get_or_insert_with(|| {
                    ctx.kubeconfigs
                        .state()
                        .iter()
                        .filter_map(|kc| kc.uid())
                        .collect()
                })
                .contains(&uid);
        if cached_owner || still_owned(ctx, &uid, owner.as_deref()).await? {
            continue;
        }
        let client = ctx.client.clone();
        match &candidate {
            Candidate::ClusterRoleBinding(name) => {
                client::delete_ignoring_absent(Api::<ClusterRoleBinding>::all(client), name).await?
            }
            Candidate::RoleBinding(ns, name) => {
                client::delete_ignoring_absent(Api::<RoleBinding>::namespaced(client, ns), name)
                    .await?
            }
            Candidate::Role(ns, name) => {
                client::delete_ignoring_absent(Api::<Role>::namespaced(client, ns), name).await?
            }
            Candidate::Copy(ns, name) => {
                client::delete_ignoring_absent(Api::<Secret>::namespaced(client, ns), name).await?
            }
        }
        info!(orphan = ?candidate, kubeconfig = owner.as_deref().unwrap_or("?"), "removed: its Kubeconfig no longer exists");
        removed += 1;
    }
    Ok(removed)
}

/// Whether the Kubeconfig the annotation names exists with that UID.
async fn still_owned(ctx: &Context, uid: &str, owner: Option<&str>) -> Result<bool> {
    let Some((ns, name)) = owner.and_then(|o| o.split_once('/')) else {
        return Ok(false);
    };
    let live = Api::<Kubeconfig>::namespaced(ctx.client.clone(), ns)
        .get_metadata_opt(name)
        .await
        .map_err(Error::kube(format!("reading Kubeconfig {ns}/{name}")))?;
    Ok(live.is_some_and(|kc| kc.uid().as_deref() == Some(uid)))
}
