//! The issuance policy of an authority: what a Kubeconfig may ask for. Pure.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};
use kubeconfig_authority_pki::{format_duration, parse_duration};

use crate::{
    api::{KubeconfigSpec, Policy},
    model::{Problem, Reason},
};

const RESERVED_PREFIX: &str = "system:";
const MASTERS: &str = "system:masters";

/// Whether `name` matches `pattern`, where `*` matches any run of characters (none included).
pub fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Checks a Kubeconfig of `namespace` (whose labels are `namespace_labels`, when known)
/// against the policy of the authority `described`. The first rule broken is reported.
pub fn check(
    policy: Option<&Policy>,
    spec: &KubeconfigSpec,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    described: &str,
    remote: bool,
) -> Result<(), Problem> {
    let default = Policy::default();
    let policy = policy.unwrap_or(&default);
    let violation = |message: String| {
        Problem::new(
            Reason::PolicyViolation,
            format!("{described} refuses this Kubeconfig: {message}"),
        )
    };

    if let Some(selector) = &policy.namespace_selector {
        let selector = Selector::try_from(selector.clone()).map_err(|e| {
            Problem::new(
                Reason::InvalidAuthority,
                format!("{described}: policy.namespaceSelector: {e}"),
            )
        })?;
        let empty = BTreeMap::new();
        if !selector.matches(namespace_labels.unwrap_or(&empty)) {
            return Err(Problem::new(
                Reason::NamespaceNotAllowed,
                format!(
                    "{described} does not serve namespace {namespace}: its policy.namespaceSelector ({selector}) does not match the namespace's labels; use another authority or ask its owner to admit the namespace"
                ),
            ));
        }
    }

    if let Some(max) = &policy.max_validity {
        let max = parse_duration(max).map_err(|e| {
            Problem::new(
                Reason::InvalidAuthority,
                format!("{described}: policy.maxValidity: {e}"),
            )
        })?;
        // An unparsable validity is reported with the rest of the spec, not here.
        if let Ok(validity) = parse_duration(&spec.validity)
            && validity > max
        {
            return Err(violation(format!(
                "spec.validity {} is longer than policy.maxValidity {}; ask for at most {}",
                spec.validity,
                format_duration(max),
                format_duration(max)
            )));
        }
    }

    // A ServiceAccount token's identity is the ServiceAccount of the Kubeconfig's own namespace;
    // the username and group rules are for certificates.
    if let Some(username) = &spec.username {
        name_allowed(
            "username",
            username,
            policy.allowed_usernames.as_deref(),
            &policy.forbidden_usernames,
            "Usernames",
        )
        .map_err(violation)?;
    }
    for group in &spec.groups {
        name_allowed(
            "group",
            group,
            policy.allowed_groups.as_deref(),
            &policy.forbidden_groups,
            "Groups",
        )
        .map_err(violation)?;
    }

    let authorization = spec.authorization.as_ref();
    let cluster_roles = authorization
        .and_then(|a| a.cluster_role_bindings.as_ref())
        .into_iter()
        .flat_map(|c| c.cluster_roles.iter())
        .chain(
            authorization
                .into_iter()
                .flat_map(|a| a.role_bindings.iter())
                .filter_map(|b| b.cluster_role.as_ref()),
        );
    // In a target cluster the admission guard, which asks this cluster, cannot know what the
    // requester may bind there: only roles the authority's owner listed may be bound.
    let unlisted = |field: &str| {
        violation(format!(
            "it binds roles in the authority's target cluster, where the admission guard cannot check the requester's rights; the authority's policy must list the roles that may be bound there (policy.{field})"
        ))
    };
    for role in cluster_roles {
        if remote && policy.allowed_cluster_roles.is_none() {
            return Err(unlisted("allowedClusterRoles"));
        }
        role_allowed("ClusterRole", role, policy.allowed_cluster_roles.as_deref())
            .map_err(violation)?;
    }
    let roles = authorization
        .into_iter()
        .flat_map(|a| a.role_bindings.iter())
        .filter_map(|b| b.role.as_ref());
    for role in roles {
        if remote && policy.allowed_roles.is_none() {
            return Err(unlisted("allowedRoles"));
        }
        role_allowed("Role", role, policy.allowed_roles.as_deref()).map_err(violation)?;
    }
    Ok(())
}

/// A username or group against its allowed and forbidden patterns and the reserved `system:`
/// prefix.
fn name_allowed(
    what: &str,
    name: &str,
    allowed: Option<&[String]>,
    forbidden: &[String],
    field: &str,
) -> Result<(), String> {
    if let Some(pattern) = forbidden.iter().find(|p| glob(p, name)) {
        return Err(format!(
            "{what} {name:?} is forbidden by policy.forbidden{field} ({pattern:?})"
        ));
    }
    let allowing = allowed.map(|list| list.iter().find(|p| glob(p, name)));
    if name == MASTERS {
        if !allowed.is_some_and(|list| list.iter().any(|p| p == MASTERS)) {
            return Err(format!(
                "{what} {MASTERS:?} bypasses all authorization; only a policy.allowed{field} entry naming exactly {MASTERS:?} allows it"
            ));
        }
        return Ok(());
    }
    match allowing {
        Some(None) => Err(format!(
            "{what} {name:?} matches none of policy.allowed{field}"
        )),
        Some(Some(pattern))
            if name.starts_with(RESERVED_PREFIX) && !pattern.starts_with(RESERVED_PREFIX) =>
        {
            Err(format!(
                "{what} {name:?} is reserved for Kubernetes (system:); only a policy.allowed{field} pattern that itself starts with \"system:\" allows it"
            ))
        }
        None if name.starts_with(RESERVED_PREFIX) => Err(format!(
            "{what} {name:?} is reserved for Kubernetes (system:); an authority allows it only by listing it in policy.allowed{field}"
        )),
        _ => Ok(()),
    }
}

fn role_allowed(kind: &str, name: &str, allowed: Option<&[String]>) -> Result<(), String> {
    match allowed {
        Some(list) if !list.iter().any(|p| glob(p, name)) => Err(format!(
            "{kind} {name:?} may not be bound: it matches none of policy.allowed{kind}s"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> KubeconfigSpec {
        let mut base = json!({"username": "susan", "groups": ["dev"], "validity": "24h", "secretRef": {"name": "s"}});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn policy(p: serde_json::Value) -> Policy {
        serde_json::from_value(p).unwrap()
    }

    fn refused(p: Option<&Policy>, s: &KubeconfigSpec) -> String {
        let problem = check(p, s, "team-a", None, "Authority team-a/ca", false).unwrap_err();
        assert!(problem.message.starts_with("Authority team-a/ca"));
        problem.message
    }

    #[test]
    fn glob_matches_whole_names() {
        assert!(glob("*", ""));
        assert!(glob("dev", "dev"));
        assert!(!glob("dev", "devops"));
        assert!(glob("team-a:*", "team-a:susan"));
        assert!(!glob("team-a:*", "team-b:susan"));
        assert!(glob("*-readers", "ns-readers"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
        assert!(!glob("ab*ba", "aba"), "prefix and suffix may not overlap");
    }

    #[test]
    fn without_a_policy_only_system_names_are_refused() {
        assert!(check(None, &spec(json!({})), "team-a", None, "x", false).is_ok());
        let m = refused(None, &spec(json!({"groups": ["system:masters"]})));
        assert!(m.contains("\"system:masters\""), "{m}");
        let m = refused(None, &spec(json!({"username": "system:admin"})));
        assert!(m.contains("reserved"), "{m}");
        let m = refused(None, &spec(json!({"groups": ["system:nodes"]})));
        assert!(m.contains("policy.allowedGroups"), "{m}");
    }

    #[test]
    fn system_masters_needs_its_exact_name() {
        let wide = policy(json!({"allowedGroups": ["system:*", "*"]}));
        assert!(
            check(
                Some(&wide),
                &spec(json!({"groups": ["system:nodes"]})),
                "n",
                None,
                "x",
                false
            )
            .is_ok()
        );
        refused(Some(&wide), &spec(json!({"groups": ["system:masters"]})));
        let any = policy(json!({"allowedGroups": ["*"]}));
        refused(Some(&any), &spec(json!({"groups": ["system:nodes"]})));
        let exact = policy(json!({"allowedGroups": ["system:masters"]}));
        assert!(
            check(
                Some(&exact),
                &spec(json!({"groups": ["system:masters"]})),
                "n",
                None,
                "x",
                false
            )
            .is_ok()
        );
        let forbidding =
            policy(json!({"allowedGroups": ["system:masters"], "forbiddenGroups": ["system:*"]}));
        let m = refused(
            Some(&forbidding),
            &spec(json!({"groups": ["system:masters"]})),
        );
        assert!(m.contains("policy.forbiddenGroups"), "{m}");
    }

    #[test]
    fn each_rule_is_named() {
        let p = policy(json!({
            "maxValidity": "168h",
            "allowedUsernames": ["team-a:*"],
            "forbiddenUsernames": ["team-a:root"],
            "allowedGroups": ["team-a"],
            "allowedClusterRoles": ["view", "edit"],
            "allowedRoles": ["deployer"],
        }));
        let ok = spec(json!({
            "username": "team-a:susan", "groups": ["team-a"], "validity": "24h",
            "authorization": {"clusterRoleBindings": {"clusterRoles": ["view"]},
                "roleBindings": [{"namespace": "team-a", "clusterRole": "edit"}, {"namespace": "team-a", "role": "deployer"}]},
        }));
        assert!(check(Some(&p), &ok, "team-a", None, "x", false).is_ok());
        let cases = [
            (json!({"validity": "200h"}), "policy.maxValidity 168h"),
            (json!({"username": "bob"}), "policy.allowedUsernames"),
            (
                json!({"username": "team-a:root"}),
                "policy.forbiddenUsernames",
            ),
            (json!({"groups": ["ops"]}), "policy.allowedGroups"),
            (
                json!({"authorization": {"clusterRoleBindings": {"clusterRoles": ["cluster-admin"]}}}),
                "ClusterRole \"cluster-admin\"",
            ),
            (
                json!({"authorization": {"roleBindings": [{"namespace": "x", "clusterRole": "admin"}]}}),
                "policy.allowedClusterRoles",
            ),
            (
                json!({"authorization": {"roleBindings": [{"namespace": "x", "role": "owner"}]}}),
                "policy.allowedRoles",
            ),
        ];
        for (change, expected) in cases {
            let mut s = ok.clone();
            let mut value = serde_json::to_value(&s).unwrap();
            value
                .as_object_mut()
                .unwrap()
                .extend(change.as_object().unwrap().clone());
            s = serde_json::from_value(value).unwrap();
            let m = refused(Some(&p), &s);
            assert!(m.contains(expected), "{expected}: {m}");
        }
    }

    #[test]
    fn the_namespace_selector_admits_by_label() {
        let p = policy(json!({"namespaceSelector": {"matchLabels": {"tenant": "oil"}}}));
        let labels = BTreeMap::from([("tenant".to_string(), "oil".to_string())]);
        assert!(
            check(
                Some(&p),
                &spec(json!({})),
                "team-a",
                Some(&labels),
                "x",
                false
            )
            .is_ok()
        );
        let problem = check(Some(&p), &spec(json!({})), "team-b", None, "x", false).unwrap_err();
        assert_eq!(problem.reason, Reason::NamespaceNotAllowed);
        assert!(
            problem.message.contains("tenant=oil"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn a_target_cluster_binds_only_listed_roles() {
        let binds = spec(json!({"authorization": {
            "clusterRoleBindings": {"clusterRoles": ["view"]},
            "roleBindings": [{"namespace": "n", "role": "deployer"}]}}));
        let problem = check(None, &binds, "n", None, "x", true).unwrap_err();
        assert!(
            problem.message.contains("policy.allowedClusterRoles"),
            "{}",
            problem.message
        );
        let listed = policy(json!({"allowedClusterRoles": ["view"]}));
        let problem = check(Some(&listed), &binds, "n", None, "x", true).unwrap_err();
        assert!(
            problem.message.contains("policy.allowedRoles"),
            "{}",
            problem.message
        );
        let both = policy(json!({"allowedClusterRoles": ["view"], "allowedRoles": ["deployer"]}));
        assert!(check(Some(&both), &binds, "n", None, "x", true).is_ok());
        // In the controller's own cluster the admission guard checks; no list is needed.
        assert!(check(None, &binds, "n", None, "x", false).is_ok());
        // Nothing bound, nothing to list.
        assert!(check(None, &spec(json!({})), "n", None, "x", true).is_ok());
    }
}
