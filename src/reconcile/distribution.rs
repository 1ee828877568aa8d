//! Copies of a Kubeconfig's Secret in the namespaces `spec.distribution.namespaceSelector`
//! matches (a tenant's namespaces), kept equal to it. A copy carries the Kubeconfig's UID
//! label and owner annotation (an ownerReference cannot cross namespaces); the finalizer
//! removes them.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    core::{Selector, SelectorExt},
};

use super::{Context, Error, Result, authority::Problem, managed::ManagedSecret};
use crate::api::{
    DATA_ANNOTATION, KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig, MANAGED_BY,
    MANAGED_BY_LABEL,
};

/// What distribution achieved, for status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Distributed {
    /// Copies in place and current.
    pub copies: i32,
    /// Namespaces where a Secret of that name exists that the controller did not create.
    pub conflicts: Vec<String>,
    /// The selector is invalid.
    pub problem: Option<Problem>,
}

/// The copies to write and the (namespace, name) of those to delete.
#[derive(Debug, Default)]
pub struct CopyPlan {
    pub write: Vec<Secret>,
    pub delete: Vec<(String, String)>,
    /// Copies already current.
    pub current: i32,
}

/// Plans the copies of `primary` (its data, when the Secret is ready to be copied) for the
/// namespaces whose labels match, against the copies observed. Pure.
pub fn plan_copies(
    kc: &Kubeconfig,
    uid: &str,
    primary: Option<&BTreeMap<String, ByteString>>,
    namespaces: &[(String, BTreeMap<String, String>)],
    observed: &[Arc<ManagedSecret>],
) -> Result<CopyPlan, Problem> {
    let own = kc.namespace().unwrap_or_default();
    let name = &kc.spec.secret_ref.name;
    let targets: Vec<&str> = match &kc.spec.distribution {
        None => Vec::new(),
        Some(d) => {
            let selector = Selector::try_from(d.namespace_selector.clone()).map_err(|e| {
                Problem::new(
                    "InvalidSpec",
                    format!("spec.distribution.namespaceSelector: {e}"),
                )
            })?;
            namespaces
                .iter()
                .filter(|(ns, labels)| *ns != own && selector.matches(labels))
                .map(|(ns, _)| ns.as_str())
                .collect()
        }
    };
    let mut plan = CopyPlan::default();
    for o in observed {
        if !targets.contains(&o.namespace.as_str()) || o.name != *name {
            plan.delete.push((o.namespace.clone(), o.name.clone()));
        }
    }
    // Without a current primary, copies are left as they are (never emptied).
    let Some(data) = primary else {
        return Ok(plan);
    };
    let digest = super::managed::digest_of(data, None);
    for ns in targets {
        let current = observed.iter().any(|o| {
            o.namespace == ns && o.name == *name && o.data_digest.as_ref() == Some(&digest)
        });
        if current {
            plan.current += 1;
            continue;
        }
        let mut annotations = BTreeMap::from([(
            KUBECONFIG_ANNOTATION.to_string(),
            format!("{own}/{}", kc.name_any()),
        )]);
        annotations.insert(DATA_ANNOTATION.into(), digest.clone());
        plan.write.push(Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_string()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    (KUBECONFIG_UID_LABEL.to_string(), uid.to_string()),
                ])),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data.clone()),
            ..Secret::default()
        });
    }
    Ok(plan)
}

/// Brings the copies in line. Runs when the spec asks for distribution or status says copies
/// may exist. A Secret of the copy's name that the controller did not create is never
/// overwritten.
pub async fn apply(
    kc: &Kubeconfig,
    uid: &str,
    primary: Option<&BTreeMap<String, ByteString>>,
    ctx: &Context,
) -> Result<Option<Distributed>> {
    let had_copies = kc
        .status
        .as_ref()
        .and_then(|s| s.distributed_copies)
        .is_some_and(|n| n > 0);
    if kc.spec.distribution.is_none() && !had_copies {
        return Ok(None);
    }
    let own = kc.namespace().unwrap_or_default();
    let observed: Vec<Arc<ManagedSecret>> = ctx
        .secrets
        .state()
        .into_iter()
        .filter(|s| s.kubeconfig_uid.as_deref() == Some(uid) && s.namespace != own)
        .collect();
    let namespaces: Vec<(String, BTreeMap<String, String>)> = ctx
        .namespaces
        .state()
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let plan = match plan_copies(kc, uid, primary, &namespaces, &observed) {
        Ok(plan) => plan,
        Err(problem) => {
            return Ok(Some(Distributed {
                problem: Some(problem),
                ..Distributed::default()
            }));
        }
    };
    if !plan.write.is_empty() || !plan.delete.is_empty() {
        ctx.spend(uid, super::Written::Copies)?;
    }
    let mut outcome = Distributed {
        copies: plan.current,
        ..Distributed::default()
    };
    for copy in plan.write {
        let ns = copy.namespace().unwrap_or_default();
        let name = copy.name_any();
        let api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
        let known = observed.iter().any(|o| o.namespace == ns && o.name == name);
        if !known {
            // Not in the cache of managed Secrets: is an unmanaged one in the way?
            let live = api
                .get_metadata_opt(&name)
                .await
                .map_err(Error::kube(format!("reading Secret {ns}/{name}")))?;
            let ours = live.as_ref().is_none_or(|s| {
                s.labels().get(KUBECONFIG_UID_LABEL).map(String::as_str) == Some(uid)
            });
            if !ours {
                outcome.conflicts.push(ns);
                continue;
            }
        }
        ctx.write_managed_secret(&ns, &copy)
            .await
            .map_err(Error::kube(format!("writing the copy {ns}/{name}")))?;
        outcome.copies += 1;
    }
    for (ns, name) in plan.delete {
        super::kubeconfig::delete_ignoring_absent(
            Api::<Secret>::namespaced(ctx.client.clone(), &ns),
            &name,
        )
        .await?;
    }
    outcome.conflicts.sort();
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kubeconfig(distribution: serde_json::Value) -> Kubeconfig {
        serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": "flux", "namespace": "oil-a", "uid": "u1"},
            "spec": {"username": "x", "validity": "1h", "secretRef": {"name": "flux-kubeconfig"}, "distribution": distribution},
        }))
        .unwrap()
    }

    fn tenant(ns: &str, tenant: &str) -> (String, BTreeMap<String, String>) {
        (
            ns.into(),
            BTreeMap::from([("tenant".into(), tenant.into())]),
        )
    }

    #[test]
    fn copies_follow_the_selector_and_the_data() {
        let kc = kubeconfig(json!({"namespaceSelector": {"matchLabels": {"tenant": "oil"}}}));
        let namespaces = [
            tenant("oil-a", "oil"),
            tenant("oil-b", "oil"),
            tenant("oil-c", "oil"),
            tenant("gas", "gas"),
        ];
        let data = BTreeMap::from([("kubeconfig".to_string(), ByteString(b"v1".to_vec()))]);
        let plan = plan_copies(&kc, "u1", Some(&data), &namespaces, &[]).unwrap();
        let targets: Vec<_> = plan.write.iter().map(|s| s.namespace().unwrap()).collect();
        assert_eq!(
            targets,
            ["oil-b", "oil-c"],
            "not its own namespace, not gas"
        );
        assert_eq!(plan.write[0].labels()[KUBECONFIG_UID_LABEL], "u1");
        assert!(plan.write[0].owner_references().is_empty());

        // In place and current: nothing to do. Rotated: rewritten. Relabelled away: deleted.
        let observed: Vec<_> = plan
            .write
            .into_iter()
            .map(|s| Arc::new(ManagedSecret::from(s)))
            .collect();
        let same = plan_copies(&kc, "u1", Some(&data), &namespaces, &observed).unwrap();
        assert!(same.write.is_empty() && same.delete.is_empty());
        assert_eq!(same.current, 2);
        let rotated = BTreeMap::from([("kubeconfig".to_string(), ByteString(b"v2".to_vec()))]);
        let plan = plan_copies(&kc, "u1", Some(&rotated), &namespaces, &observed).unwrap();
        assert_eq!(plan.write.len(), 2);
        let moved = [
            tenant("oil-a", "oil"),
            tenant("oil-b", "oil"),
            tenant("oil-c", "gas"),
        ];
        let plan = plan_copies(&kc, "u1", Some(&data), &moved, &observed).unwrap();
        assert_eq!(
            plan.delete,
            [("oil-c".to_string(), "flux-kubeconfig".to_string())]
        );
        // No primary yet: nothing is written, stale copies still go.
        let plan = plan_copies(&kc, "u1", None, &moved, &observed).unwrap();
        assert!(plan.write.is_empty() && plan.delete.len() == 1);
        // Distribution removed: every copy goes.
        let mut without = kc.clone();
        without.spec.distribution = None;
        let plan = plan_copies(&without, "u1", Some(&data), &namespaces, &observed).unwrap();
        assert_eq!(plan.delete.len(), 2);
    }
}
