//! Copies of a Kubeconfig's Secret in the namespaces `spec.distribution.namespaceSelector`
//! matches (a tenant's namespaces), kept equal to it. A copy carries the Kubeconfig's UID
//! label and owner annotation (an ownerReference cannot cross namespaces); the finalizer
//! removes them.
//!
//! A copy hands the credential to whoever can read Secrets in its namespace, and the
//! controller may write Secrets everywhere. So a namespace gets a copy only when three hold,
//! each asked again on every reconcile that writes copies and at least every
//! [`RECHECK`]:
//! - the authority's `policy.distributionNamespaceSelector` (an admin's decision; unset: none)
//!   matches it;
//! - the credential's own identity (the username and groups it carries, or the
//!   ServiceAccount with its groups) may create and update that Secret there (a
//!   SubjectAccessReview): admission proved the requester can become that identity, so a copy
//!   puts the Secret nowhere the requester could not have written it;
//! - no Kubeconfig of that namespace refers to a Secret of that name.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::{
    ResourceExt,
    core::{Selector, SelectorExt},
};

use crate::api::{
    DATA_ANNOTATION, KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig, MANAGED_BY,
    MANAGED_BY_LABEL, UID_GROUP_PREFIX,
};
use crate::model::{
    Problem, Reason,
    managed::{self, ManagedSecret},
};
use kubeconfig_authority_pki::KUBECONFIG_GROUP_PREFIX;

/// How often a Kubeconfig with copies is reconciled at least, so that a right withdrawn from
/// its identity (or a Kubeconfig that claims the name) removes the copy within that time.
pub const RECHECK: Duration = Duration::from_secs(300);
/// How soon a Kubeconfig is looked at again when an access review refused a namespace.
pub const RECHECK_REFUSED: Duration = Duration::from_secs(30);

/// What distribution achieved, for status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Distributed {
    /// Copies in place and current.
    pub copies: i32,
    /// Namespaces where a Secret of that name exists that the controller did not create.
    pub conflicts: Vec<String>,
    /// Namespaces the selector matches that get no copy, each with the reason.
    pub refused: Vec<String>,
    /// Some of them were refused by an access review (rights may still come).
    pub reviews_refused: bool,
    /// The selector is invalid.
    pub problem: Option<Problem>,
}

/// Who a credential makes its holder: the subject of the access reviews.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub user: String,
    pub groups: Vec<String>,
}

/// The identity the Kubeconfig's credential carries, as the API server authenticates it. Pure.
pub fn subject(kc: &Kubeconfig, uid: &str) -> Option<Subject> {
    let mut groups: Vec<String> = Vec::new();
    let user = match (&kc.spec.username, &kc.spec.service_account_ref) {
        (Some(username), _) => {
            groups.extend(kc.spec.groups.iter().cloned());
            groups.push(format!("{KUBECONFIG_GROUP_PREFIX}{}", kc.name_any()));
            groups.push(format!("{UID_GROUP_PREFIX}{uid}"));
            username.clone()
        }
        (None, Some(sa)) => {
            let namespace = kc.namespace()?;
            groups.push("system:serviceaccounts".into());
            groups.push(format!("system:serviceaccounts:{namespace}"));
            format!("system:serviceaccount:{namespace}:{}", sa.name)
        }
        (None, None) => return None,
    };
    groups.push("system:authenticated".into());
    Some(Subject { user, groups })
}

/// The namespaces that may get a copy, and those the selector matches that may not (with the
/// reason).
#[derive(Debug, Default, PartialEq)]
pub struct Targets {
    pub allowed: Vec<String>,
    pub refused: Vec<String>,
}

/// The namespaces a copy may go to, before the access review: those the Kubeconfig's selector
/// and the authority's `policy.distributionNamespaceSelector` both match, but its own and those
/// where a Kubeconfig refers to a Secret of that name (`claimed`). Pure.
pub fn targets(
    kc: &Kubeconfig,
    allowed_by_policy: Option<&LabelSelector>,
    namespaces: &[(String, BTreeMap<String, String>)],
    claimed: &[String],
) -> Result<Targets, Problem> {
    let Some(distribution) = &kc.spec.distribution else {
        return Ok(Targets::default());
    };
    let own = kc.namespace().unwrap_or_default();
    let selector = |field: &str, s: &LabelSelector| {
        Selector::try_from(s.clone())
            .map_err(|e| Problem::new(Reason::InvalidSpec, format!("{field}: {e}")))
    };
    let wanted = selector(
        "spec.distribution.namespaceSelector",
        &distribution.namespace_selector,
    )?;
    let allowed = allowed_by_policy
        .map(|s| selector("the authority's policy.distributionNamespaceSelector", s))
        .transpose()?;
    let mut out = Targets::default();
    for (ns, labels) in namespaces {
        if *ns == own || !wanted.matches(labels) {
            continue;
        }
        if claimed.contains(ns) {
            out.refused.push(format!(
                "{ns} (a Kubeconfig there writes its own Secret {})",
                kc.spec.secret_ref.name
            ));
        } else if allowed.as_ref().is_some_and(|a| a.matches(labels)) {
            out.allowed.push(ns.clone());
        } else {
            out.refused.push(format!(
                "{ns} (not matched by the authority's policy.distributionNamespaceSelector)"
            ));
        }
    }
    Ok(out)
}

/// The copies to write and the (namespace, name) of those to delete.
#[derive(Debug, Default)]
pub struct CopyPlan {
    pub write: Vec<Secret>,
    pub delete: Vec<(String, String)>,
    /// Copies already current.
    pub current: i32,
}

/// Plans the copies of `primary` (the data of a Secret holding a valid credential; `None`: the
/// Kubeconfig holds none, and neither may any copy) for the `targets`, against the copies
/// observed. Pure.
pub fn plan_copies(
    kc: &Kubeconfig,
    uid: &str,
    primary: Option<&BTreeMap<String, ByteString>>,
    targets: &[String],
    observed: &[Arc<ManagedSecret>],
) -> CopyPlan {
    let own = kc.namespace().unwrap_or_default();
    let name = &kc.spec.secret_ref.name;
    let mut plan = CopyPlan::default();
    let Some(data) = primary else {
        plan.delete = observed
            .iter()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .collect();
        return plan;
    };
    for o in observed {
        if !targets.contains(&o.namespace) || o.name != *name {
            plan.delete.push((o.namespace.clone(), o.name.clone()));
        }
    }
    let digest = managed::digest_of(data, None);
    for ns in targets {
        let current = observed
            .iter()
            .any(|o| o.namespace == *ns && o.name == *name && o.data_digest == Some(digest));
        if current {
            plan.current += 1;
            continue;
        }
        let annotations = BTreeMap::from([
            (
                KUBECONFIG_ANNOTATION.to_string(),
                format!("{own}/{}", kc.name_any()),
            ),
            (DATA_ANNOTATION.to_string(), digest.to_string()),
        ]);
        plan.write.push(Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
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
    plan
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

    fn plan(
        kc: &Kubeconfig,
        data: Option<&BTreeMap<String, ByteString>>,
        namespaces: &[(String, BTreeMap<String, String>)],
        observed: &[Arc<ManagedSecret>],
    ) -> CopyPlan {
        let policy: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"tenant": "oil"}})).unwrap();
        let targets = targets(kc, Some(&policy), namespaces, &[]).unwrap();
        plan_copies(kc, "u1", data, &targets.allowed, observed)
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
        let first = plan(&kc, Some(&data), &namespaces, &[]);
        let targets: Vec<_> = first.write.iter().map(|s| s.namespace().unwrap()).collect();
        assert_eq!(
            targets,
            ["oil-b", "oil-c"],
            "not its own namespace, not gas"
        );
        assert_eq!(first.write[0].labels()[KUBECONFIG_UID_LABEL], "u1");
        assert!(first.write[0].owner_references().is_empty());

        // In place and current: nothing to do. Rotated: rewritten. Relabelled away: deleted.
        let observed: Vec<_> = first
            .write
            .into_iter()
            .map(|s| Arc::new(ManagedSecret::from(s)))
            .collect();
        let same = plan(&kc, Some(&data), &namespaces, &observed);
        assert!(same.write.is_empty() && same.delete.is_empty());
        assert_eq!(same.current, 2);
        let rotated = BTreeMap::from([("kubeconfig".to_string(), ByteString(b"v2".to_vec()))]);
        assert_eq!(
            plan(&kc, Some(&rotated), &namespaces, &observed)
                .write
                .len(),
            2
        );
        let moved = [
            tenant("oil-a", "oil"),
            tenant("oil-b", "oil"),
            tenant("oil-c", "gas"),
        ];
        assert_eq!(
            plan(&kc, Some(&data), &moved, &observed).delete,
            [("oil-c".to_string(), "flux-kubeconfig".to_string())]
        );
        // No valid credential: nothing is written, and every copy goes.
        let withdrawn = plan(&kc, None, &namespaces, &observed);
        assert!(withdrawn.write.is_empty() && withdrawn.delete.len() == 2);
        // Distribution removed: every copy goes.
        let mut without = kc.clone();
        without.spec.distribution = None;
        assert_eq!(
            plan(&without, Some(&data), &namespaces, &observed)
                .delete
                .len(),
            2
        );
    }

    #[test]
    fn only_namespaces_the_policy_allows_and_nobody_claims_are_targets() {
        let kc = kubeconfig(json!({"namespaceSelector": {}}));
        let namespaces = [
            tenant("oil-a", "oil"),
            tenant("oil-b", "oil"),
            tenant("oil-c", "oil"),
            ("kube-system".to_string(), BTreeMap::new()),
        ];
        // No policy selector: nowhere, and each namespace says why.
        let none = targets(&kc, None, &namespaces, &[]).unwrap();
        assert!(none.allowed.is_empty());
        assert_eq!(none.refused.len(), 3, "{:?}", none.refused);
        assert!(none.refused.iter().any(|r| r.starts_with("kube-system (")));
        let policy: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"tenant": "oil"}})).unwrap();
        let some = targets(&kc, Some(&policy), &namespaces, &["oil-c".to_string()]).unwrap();
        assert_eq!(some.allowed, ["oil-b"]);
        assert_eq!(some.refused.len(), 2);
        assert!(
            some.refused
                .iter()
                .any(|r| r.starts_with("oil-c (a Kubeconfig there"))
        );
        let bad: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}),
        )
        .unwrap();
        assert!(targets(&kc, Some(&bad), &namespaces, &[]).is_err());
    }

    #[test]
    fn the_subject_is_what_the_credential_authenticates_as() {
        let kc = kubeconfig(json!({"namespaceSelector": {}}));
        let cert = subject(&kc, "u1").unwrap();
        assert_eq!(cert.user, "x");
        assert_eq!(
            cert.groups,
            [
                "kubeconfig:flux",
                "kubeconfig-uid:u1",
                "system:authenticated"
            ]
        );
        let sa: Kubeconfig = serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": "flux", "namespace": "oil-a", "uid": "u1"},
            "spec": {"serviceAccountRef": {"name": "flux"}, "validity": "1h", "secretRef": {"name": "s"}},
        }))
        .unwrap();
        let token = subject(&sa, "u1").unwrap();
        assert_eq!(token.user, "system:serviceaccount:oil-a:flux");
        assert_eq!(
            token.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:oil-a",
                "system:authenticated"
            ]
        );
    }
}
