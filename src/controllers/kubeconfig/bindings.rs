//! The RBAC a Kubeconfig binds: the objects wanted, and the plan against those observed. Pure.

use std::sync::Arc;

use k8s_openapi::{
    api::rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};

use super::request::self_impersonating;
use crate::model::labels::{labels_match, owned_labels, owner_annotation};
use crate::{
    api::{Authorization, Kubeconfig, UID_GROUP_PREFIX},
    model::managed::{self},
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The bindings to create or update, and those to delete.
#[derive(Debug, Default, PartialEq)]
pub struct BindingPlan {
    pub apply_cluster: Vec<ClusterRoleBinding>,
    pub apply_namespaced: Vec<RoleBinding>,
    /// Roles the controller writes itself (self-impersonation of a ServiceAccount).
    pub apply_roles: Vec<Role>,
    pub delete_cluster: Vec<String>,
    pub delete_namespaced: Vec<(String, String)>,
    pub delete_roles: Vec<(String, String)>,
}

impl BindingPlan {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Compares the bindings the spec asks for (none when the policy does not `allow` them) with
/// those observed (carrying this object's UID label). Pure.
pub fn plan_bindings(
    kc: &Kubeconfig,
    uid: &str,
    allowed: bool,
    observed_cluster: &[Arc<ClusterRoleBinding>],
    observed_namespaced: &[Arc<RoleBinding>],
    observed_roles: &[Arc<Role>],
) -> BindingPlan {
    let (want_cluster, want_namespaced) = if allowed {
        desired_bindings(kc, uid)
    } else {
        Default::default()
    };
    let want_roles = if allowed {
        desired_roles(kc, uid)
    } else {
        Vec::new()
    };
    let (apply_roles, delete_roles) =
        plan_kind(want_roles, observed_roles, uid, |a, b| a.rules == b.rules);
    let (apply_cluster, delete_cluster) = plan_kind(want_cluster, observed_cluster, uid, |a, b| {
        a.role_ref == b.role_ref && a.subjects == b.subjects
    });
    let (apply_namespaced, delete_namespaced) =
        plan_kind(want_namespaced, observed_namespaced, uid, |a, b| {
            a.role_ref == b.role_ref && a.subjects == b.subjects
        });
    BindingPlan {
        apply_cluster,
        apply_namespaced,
        apply_roles,
        delete_cluster: delete_cluster.into_iter().map(|(_, name)| name).collect(),
        delete_namespaced,
        delete_roles,
    }
}

/// With `serviceAccountRef.impersonateSelf`: the Role allowing the ServiceAccount to
/// impersonate itself, in the Kubeconfig's namespace.
pub fn desired_roles(kc: &Kubeconfig, uid: &str) -> Vec<Role> {
    let Some(sa) = self_impersonating(kc) else {
        return Vec::new();
    };
    vec![Role {
        metadata: ObjectMeta {
            name: Some(self_impersonation_name(kc)),
            namespace: kc.namespace(),
            labels: Some(owned_labels(uid)),
            annotations: Some(owner_annotation(kc)),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["serviceaccounts".into()]),
            verbs: vec!["impersonate".into()],
            resource_names: Some(vec![sa.to_string()]),
            ..PolicyRule::default()
        }]),
    }]
}

/// For one kind of binding: those wanted that are missing or differ (`same` compares role and
/// subjects; labels are checked here), and the (namespace, name) of those observed but not
/// wanted.
fn plan_kind<B: Resource>(
    want: Vec<B>,
    observed: &[Arc<B>],
    uid: &str,
    same: impl Fn(&B, &B) -> bool,
) -> (Vec<B>, Vec<(String, String)>) {
    let key = |b: &B| {
        (
            b.meta().namespace.clone().unwrap_or_default(),
            b.meta().name.clone().unwrap_or_default(),
        )
    };
    let wanted: Vec<(String, String)> = want.iter().map(key).collect();
    let apply = want
        .into_iter()
        .filter(|w| {
            !observed.iter().any(|o| {
                key(o) == key(w) && same(o, w) && labels_match(o.meta().labels.as_ref(), uid)
            })
        })
        .collect();
    let delete = observed
        .iter()
        .map(|o| key(o))
        .filter(|k| !wanted.contains(k))
        .collect();
    (apply, delete)
}

fn cluster_roles(authorization: Option<&Authorization>) -> Vec<String> {
    let mut roles: Vec<String> = authorization
        .and_then(|a| a.cluster_role_bindings.as_ref())
        .map(|c| c.cluster_roles.clone())
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    roles
}

/// The ClusterRoleBindings and RoleBindings the spec asks for, all to the identity the
/// credential carries: for a certificate, the group `kubeconfig-uid:<uid>`, which only
/// certificates issued for this very object carry; for a token, its ServiceAccount (a token
/// carries no group of its own, and whoever asked for it may already act as that account:
/// admission checked they may impersonate it or request its tokens).
pub fn desired_bindings(kc: &Kubeconfig, uid: &str) -> (Vec<ClusterRoleBinding>, Vec<RoleBinding>) {
    let namespace = kc.namespace().unwrap_or_default();
    let name = kc.name_any();
    let subject = match &kc.spec.service_account_ref {
        Some(sa) => Subject {
            kind: "ServiceAccount".into(),
            api_group: None,
            name: sa.name.clone(),
            namespace: Some(namespace.clone()),
        },
        None => Subject {
            kind: "Group".into(),
            api_group: Some(RBAC_GROUP.into()),
            name: format!("{UID_GROUP_PREFIX}{uid}"),
            namespace: None,
        },
    };
    let subjects = Some(vec![subject]);
    let meta = |binding_name: String, binding_namespace: Option<String>| ObjectMeta {
        name: Some(binding_name),
        namespace: binding_namespace,
        labels: Some(owned_labels(uid)),
        annotations: Some(owner_annotation(kc)),
        ..ObjectMeta::default()
    };
    let cluster = cluster_roles(kc.spec.authorization.as_deref())
        .into_iter()
        .map(|role| ClusterRoleBinding {
            metadata: meta(binding_name(&[&namespace, &name, &role]), None),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "ClusterRole".into(),
                name: role,
            },
            subjects: subjects.clone(),
        })
        .collect();
    let mut namespaced: Vec<RoleBinding> = Vec::new();
    for b in kc
        .spec
        .authorization
        .iter()
        .flat_map(|a| a.role_bindings.iter())
    {
        let (kind, role) = match (&b.cluster_role, &b.role) {
            (Some(cr), _) => ("ClusterRole", cr.clone()),
            (None, Some(r)) => ("Role", r.clone()),
            (None, None) => continue,
        };
        let binding = RoleBinding {
            metadata: meta(
                binding_name(&[&namespace, &name, &kind.to_ascii_lowercase(), &role]),
                Some(b.namespace.clone()),
            ),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: kind.into(),
                name: role,
            },
            subjects: subjects.clone(),
        };
        if !namespaced.iter().any(|o| {
            o.metadata.namespace == binding.metadata.namespace
                && o.metadata.name == binding.metadata.name
        }) {
            namespaced.push(binding);
        }
    }
    if let Some(sa) = self_impersonating(kc) {
        let role = self_impersonation_name(kc);
        namespaced.push(RoleBinding {
            metadata: meta(role.clone(), Some(namespace.clone())),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "Role".into(),
                name: role,
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                api_group: None,
                name: sa.to_string(),
                namespace: Some(namespace),
            }]),
        });
    }
    (cluster, namespaced)
}

/// `kubeconfig:<parts joined by ':'>`, cut to 253 characters with a digest suffix when longer.
fn binding_name(parts: &[&str]) -> String {
    let name = format!("kubeconfig:{}", parts.join(":"));
    if name.len() <= 253 {
        return name;
    }
    let suffix = &managed::digest(name.as_bytes())[..16];
    let mut cut = 253 - suffix.len() - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{suffix}", &name[..cut])
}

fn self_impersonation_name(kc: &Kubeconfig) -> String {
    binding_name(&[
        &kc.namespace().unwrap_or_default(),
        &kc.name_any(),
        "impersonate-self",
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::kubeconfig::fixtures::*;
    use serde_json::json;

    #[test]
    fn bindings_name_the_identity_the_credential_carries() {
        let subject = |spec: serde_json::Value| {
            let (cluster, _) = desired_bindings(&kubeconfig(spec), UID);
            cluster[0].subjects.clone().unwrap()
        };
        let granted = json!({"clusterRoleBindings": {"clusterRoles": ["view"]}});
        let certificate = subject(json!({
            "username": "susan", "validity": "1h", "secretRef": {"name": "s"}, "authorization": granted,
        }));
        assert_eq!(certificate[0].kind, "Group");
        assert_eq!(certificate[0].name, format!("{UID_GROUP_PREFIX}{UID}"));
        // A token carries no group of its own: the binding names its ServiceAccount.
        let token = subject(json!({
            "serviceAccountRef": {"name": "flux"}, "validity": "1h", "secretRef": {"name": "s"}, "authorization": granted,
        }));
        assert_eq!(token[0].kind, "ServiceAccount");
        assert_eq!(token[0].name, "flux");
        assert_eq!(token[0].namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn bindings_are_planned_against_what_exists() {
        let kc = kubeconfig(json!({
            "username": "susan", "validity": "1h", "secretRef": {"name": "s"},
            "authorization": {
                "clusterRoleBindings": {"clusterRoles": ["view", "view"]},
                "roleBindings": [{"namespace": "team-a", "clusterRole": "edit"}, {"namespace": "team-b", "role": "deployer"}],
            },
        }));
        let plan = plan_bindings(&kc, UID, true, &[], &[], &[]);
        assert_eq!(plan.apply_cluster.len(), 1, "duplicates collapse");
        assert_eq!(
            plan.apply_cluster[0].name_any(),
            "kubeconfig:team-a:susan:view"
        );
        let names: Vec<_> = plan
            .apply_namespaced
            .iter()
            .map(|b| {
                (
                    b.namespace().unwrap(),
                    b.name_any(),
                    b.role_ref.kind.clone(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (
                    "team-a".to_string(),
                    "kubeconfig:team-a:susan:clusterrole:edit".to_string(),
                    "ClusterRole".to_string()
                ),
                (
                    "team-b".to_string(),
                    "kubeconfig:team-a:susan:role:deployer".to_string(),
                    "Role".to_string()
                ),
            ]
        );
        // Everything in place: nothing to do.
        let (cluster, namespaced) = desired_bindings(&kc, UID);
        let cluster: Vec<_> = cluster.into_iter().map(Arc::new).collect();
        let mut namespaced: Vec<_> = namespaced.into_iter().map(Arc::new).collect();
        assert!(plan_bindings(&kc, UID, true, &cluster, &namespaced, &[]).is_empty());
        // Refused by the policy: every binding goes.
        let refused = plan_bindings(&kc, UID, false, &cluster, &namespaced, &[]);
        assert_eq!(
            (
                refused.delete_cluster.len(),
                refused.delete_namespaced.len()
            ),
            (1, 2)
        );
        assert!(refused.apply_cluster.is_empty() && refused.apply_namespaced.is_empty());
        // An edited binding is re-applied; one no longer asked for is deleted.
        let mut edited = (*namespaced[0]).clone();
        edited.subjects = None;
        namespaced[0] = Arc::new(edited);
        let mut stale = (*namespaced[1]).clone();
        stale.metadata.name = Some("kubeconfig:team-a:susan:role:old".into());
        namespaced.push(Arc::new(stale));
        let plan = plan_bindings(&kc, UID, true, &cluster, &namespaced, &[]);
        assert_eq!(plan.apply_namespaced.len(), 1);
        assert_eq!(
            plan.delete_namespaced,
            [(
                "team-b".to_string(),
                "kubeconfig:team-a:susan:role:old".to_string()
            )]
        );
        assert!(binding_name(&["a".repeat(300).as_str()]).len() <= 253);
    }
}
