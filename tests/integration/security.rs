//! Security against the real control plane, acting as real users with certificates from the
//! test CA: the escalation guard (admission), the authorities' policies, malformed objects, and
//! what the controller writes to its log and events.

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::Secret,
    events::v1::Event,
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::{ClusterAuthority, Kubeconfig};
use serde_json::{Value, json};

use crate::{
    apply,
    control_plane::whoami,
    create_configmap, delete_and_wait, eventually, kubeconfig_of, plane, secret, setup, spec,
    support::{TestCa, client_from_kubeconfig},
    until_code, wait_condition, wait_ready,
};

/// Creates a Kubeconfig from raw JSON (so that malformed ones reach the API server).
async fn create(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<Kubeconfig>(&()),
    )
    .create(&PostParams::default(), &object)
    .await
}

/// The API server's refusal of a request: its code and message.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn grant(admin: &Client, binding: Value) {
    let params = PatchParams::apply("tests").force();
    let name = binding["metadata"]["name"].as_str().unwrap().to_string();
    match binding["metadata"]["namespace"].as_str() {
        Some(ns) => {
            let b: RoleBinding = serde_json::from_value(binding.clone()).unwrap();
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .patch(&name, &params, &Patch::Apply(&b))
                .await
                .unwrap();
        }
        None => {
            let b: ClusterRoleBinding = serde_json::from_value(binding.clone()).unwrap();
            Api::<ClusterRoleBinding>::all(admin.clone())
                .patch(&name, &params, &Patch::Apply(&b))
                .await
                .unwrap();
        }
    }
}

fn user_binding(name: &str, namespace: Option<&str>, cluster_role: &str, user: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": if namespace.is_some() { "RoleBinding" } else { "ClusterRoleBinding" },
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    })
}

/// Nothing was issued or bound for the Kubeconfig `name` of `ns`.
async fn nothing_issued(admin: &Client, ns: &str, name: &str, secret_name: &str) {
    if let Err(e) = nothing_issued_yet(admin, ns, name, secret_name).await {
        panic!("{name}: {e}");
    }
}

#[tokio::test]
async fn a_requester_gets_nothing_they_could_not_get_anyway() {
    let ca = &plane().ca;
    let (admin, ns) = setup("sec", ca).await;
    let (_, other_ns) = setup("sec-other", ca).await;
    let suffix = &ns[ns.len() - 6..];
    let mallory = format!("mallory-{suffix}");
    let susan = format!("susan-{suffix}");
    let group = format!("dev-{suffix}");
    // The authority allows at most a day.
    let authority = json!({"apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
        "metadata": {"name": "cluster-ca"}, "spec": {"policy": {"maxValidity": "24h"}}});
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::apply("tests-policy"),
            &Patch::Apply(&authority),
        )
        .await
        .unwrap();
    // A ClusterAuthority for another tenant only.
    let restricted = format!("other-tenant-{suffix}");
    let cluster_authority: ClusterAuthority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "ClusterAuthority",
        "metadata": {"name": restricted},
        "spec": {"server": plane().server, "signer": {"caSecretRef": {"name": "cluster-ca", "namespace": other_ns}},
            "policy": {"namespaceSelector": {"matchLabels": {"tenant": "other"}}}},
    }))
    .unwrap();
    Api::<ClusterAuthority>::all(admin.clone())
        .create(&PostParams::default(), &cluster_authority)
        .await
        .unwrap();

    // Mallory may create Kubeconfigs in the namespace, and nothing else.
    grant(
        &admin,
        user_binding(
            "requester",
            Some(&ns),
            "kubeconfig-authority:requester",
            &mallory,
        ),
    )
    .await;
    let as_mallory = plane().client_for(&mallory, &[]).await;
    let wanted = |extra: Value| {
        let mut s = spec(&susan, json!({"groups": [group]}));
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let (code, message) = eventually(Duration::from_secs(10), "the requester may create", || {
        let client = as_mallory.clone();
        let (ns, s) = (ns.clone(), wanted(json!({})));
        async move {
            match create(&client, &ns, "first", s).await {
                Err(kube::Error::Api(status))
                    if status.code != 403 || status.message.contains("impersonate") =>
                {
                    Ok((status.code, status.message))
                }
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains(&format!("user \"{susan}\"")) && message.contains("impersonate"),
        "{message}"
    );

    // Given the right to claim susan and the group, and to bind view and edit in the namespace.
    let identities = format!("identities-{suffix}");
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": identities},
        "rules": [
            {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": [susan]},
            {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"], "resourceNames": [group]},
        ],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    grant(
        &admin,
        user_binding(&identities, None, &identities, &mallory),
    )
    .await;
    grant(
        &admin,
        user_binding(
            "binder",
            Some(&ns),
            "kubeconfig-authority:namespace-binder",
            &mallory,
        ),
    )
    .await;

    // Refused at admission, each with its reason; nothing is created.
    let elsewhere = format!("ClusterRole \"view\" in namespace {other_ns}");
    let attempts = [
        (
            "masters",
            wanted(json!({"groups": [group, "system:masters"]})),
            "group \"system:masters\"",
        ),
        (
            "other-user",
            spec(&format!("bob-{suffix}"), json!({"groups": [group]})),
            "user \"bob-",
        ),
        (
            "cluster-admin",
            wanted(
                json!({"authorization": {"clusterRoleBindings": {"clusterRoles": ["cluster-admin"]}}}),
            ),
            "ClusterRole \"cluster-admin\" cluster-wide",
        ),
        (
            "admin-here",
            wanted(
                json!({"authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "admin"}]}}),
            ),
            "ClusterRole \"admin\" in namespace",
        ),
        (
            "view-elsewhere",
            wanted(
                json!({"authorization": {"roleBindings": [{"namespace": other_ns, "clusterRole": "view"}]}}),
            ),
            elsewhere.as_str(),
        ),
    ];
    for (name, s, expected) in attempts {
        let secret_name = s["secretRef"]["name"].as_str().unwrap().to_string();
        let (code, message) = eventually(Duration::from_secs(10), name, || {
            let (client, ns, s) = (as_mallory.clone(), ns.clone(), s.clone());
            async move {
                match create(&client, &ns, name, s).await {
                    Err(kube::Error::Api(status)) if status.message.contains(expected) => {
                        Ok((status.code, status.message))
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        assert_eq!(code, 403, "{name}: {message}");
        assert!(
            message.contains("grant the requester the verb"),
            "{name} says how to fix it: {message}"
        );
        assert!(
            Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
                .get_opt(name)
                .await
                .unwrap()
                .is_none(),
            "{name} was not created"
        );
        nothing_issued(&admin, &ns, name, &secret_name).await;
    }

    // Admitted (the requester has the rights), but refused by the controller: another
    // namespace's Authority, a ClusterAuthority that does not serve this namespace, a validity
    // longer than the policy allows. A condition says why; nothing is issued or bound.
    let refused_by_controller = [
        (
            "elsewhere",
            wanted(
                json!({"authorityRef": {"name": "other-ca"}, "secretRef": {"name": "elsewhere"}}),
            ),
            "AuthorityNotFound",
            "serves only the Kubeconfigs of its own namespace",
        ),
        (
            "not-served",
            wanted(
                json!({"authorityRef": {"kind": "ClusterAuthority", "name": restricted}, "secretRef": {"name": "not-served"}}),
            ),
            "NamespaceNotAllowed",
            "does not serve namespace",
        ),
        (
            "too-long",
            wanted(
                json!({"validity": "48h", "secretRef": {"name": "too-long"}, "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]}}),
            ),
            "PolicyViolation",
            "longer than policy.maxValidity 24h",
        ),
    ];
    // An Authority of that name exists, but in the other namespace.
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &other_ns)
        .patch("other-ca", &PatchParams::apply("tests"), &Patch::Apply(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority", "metadata": {"name": "other-ca"},
            "spec": {"server": plane().server, "signer": {"caSecretRef": {"name": "cluster-ca"}}}})))
        .await
        .unwrap();
    for (name, s, reason, expected) in refused_by_controller {
        eventually(Duration::from_secs(10), name, || {
            let (client, ns, s) = (as_mallory.clone(), ns.clone(), s.clone());
            async move {
                create(&client, &ns, name, s)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        let kc = wait_condition(
            &admin,
            &ns,
            name,
            "False",
            Some(reason),
            Duration::from_secs(10),
        )
        .await;
        let message = &kc.status.unwrap().conditions[0].message;
        assert!(message.contains(expected), "{name}: {message}");
        nothing_issued(&admin, &ns, name, name).await;
    }

    // Exactly the rights the request needs: it succeeds, and the kubeconfig works.
    let ok = wanted(
        json!({"authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "edit"}]}}),
    );
    create(&as_mallory, &ns, "susan", ok).await.unwrap();
    wait_ready(&admin, &ns, "susan").await;
    let susan_client =
        client_from_kubeconfig(&kubeconfig_of(&admin, &ns, &format!("{susan}-kubeconfig")).await)
            .await;
    let (user, groups) = whoami(susan_client.clone()).await;
    assert_eq!(user, susan);
    assert!(groups.contains(&group));
    until_code("susan may edit her namespace", 200, || {
        create_configmap(susan_client.clone(), ns.clone(), "by-susan")
    })
    .await;

    // Once the right to bind is gone, the requester can no longer change what is bound.
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .delete("binder", &Default::default())
        .await
        .unwrap();
    let (code, message) = eventually(Duration::from_secs(10), "bind right revoked", || {
        let (client, ns) = (as_mallory.clone(), ns.clone());
        async move {
            let change = json!({"spec": {"authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]}}});
            // A dry run: an answer that comes before the revocation reaches the authorizer
            // changes nothing.
            let params = PatchParams { dry_run: true, ..Default::default() };
            match Api::<Kubeconfig>::namespaced(client, &ns)
                .patch("susan", &params, &Patch::Merge(&change))
                .await
            {
                Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(code, 403, "{message}");
    Api::<ClusterAuthority>::all(admin.clone())
        .delete(&restricted, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_policy_binds_even_those_who_may_do_anything() {
    let ca = TestCa::new("policy-ca");
    let (admin, ns) = setup("policy", &ca).await;
    let authority = json!({"apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
        "metadata": {"name": "cluster-ca"}, "spec": {"policy": {
            "allowedUsernames": ["team-*"], "forbiddenUsernames": ["team-root"],
            "allowedGroups": ["team", "system:masters"], "allowedClusterRoles": ["view"]}}});
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::apply("tests-policy"),
            &Patch::Apply(&authority),
        )
        .await
        .unwrap();
    let cases = [
        (
            "a",
            spec("alice", json!({"groups": ["team"]})),
            "policy.allowedUsernames",
        ),
        (
            "b",
            spec("team-root", json!({"groups": ["team"]})),
            "policy.forbiddenUsernames",
        ),
        (
            "c",
            spec("team-c", json!({"groups": ["ops"]})),
            "policy.allowedGroups",
        ),
        (
            "d",
            spec(
                "team-d",
                json!({"groups": ["team"], "authorization": {"clusterRoleBindings": {"clusterRoles": ["edit"]}}}),
            ),
            "ClusterRole \"edit\" may not be bound",
        ),
    ];
    for (name, s, expected) in cases {
        apply(&admin, &ns, name, s.clone()).await;
        let kc = wait_condition(
            &admin,
            &ns,
            name,
            "False",
            Some("PolicyViolation"),
            Duration::from_secs(10),
        )
        .await;
        let message = &kc.status.unwrap().conditions[0].message;
        assert!(message.contains(expected), "{name}: {message}");
        nothing_issued(&admin, &ns, name, s["secretRef"]["name"].as_str().unwrap()).await;
    }
    // Allowed by exact name, system:masters is issued (and works: the authority's owner chose it).
    apply(&admin, &ns, "e", spec("team-e", json!({"groups": ["system:masters"], "authorization": {"clusterRoleBindings": {"clusterRoles": ["view"]}}}))).await;
    wait_ready(&admin, &ns, "e").await;

    // Tightening the policy removes the bindings of a Kubeconfig that no longer complies.
    let uid = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .get("e")
        .await
        .unwrap()
        .uid()
        .unwrap();
    let tightened = json!({"apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
        "metadata": {"name": "cluster-ca"}, "spec": {"policy": {"allowedGroups": ["team"], "allowedClusterRoles": ["view"]}}});
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::apply("tests-policy"),
            &Patch::Apply(&tightened),
        )
        .await
        .unwrap();
    wait_condition(
        &admin,
        &ns,
        "e",
        "False",
        Some("PolicyViolation"),
        Duration::from_secs(10),
    )
    .await;
    let selector =
        ListParams::default().labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    eventually(Duration::from_secs(5), "the binding removed", || {
        let (admin, selector) = (admin.clone(), selector.clone());
        async move {
            let left = Api::<ClusterRoleBinding>::all(admin)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            if left.items.is_empty() {
                Ok(())
            } else {
                Err(format!("{} left", left.items.len()))
            }
        }
    })
    .await;
    delete_and_wait(&admin, &ns, "e").await;
}

/// Objects no one should be able to store, each with the words its refusal must contain.
fn malformed(ns: &str) -> Vec<(&'static str, Value, &'static str)> {
    let groups: Vec<String> = (0..200).map(|i| format!("g{i}")).collect();
    vec![
        (
            "empty username",
            spec("x", json!({"username": ""})),
            "spec.username",
        ),
        (
            "overlong username",
            spec("x", json!({"username": "u".repeat(300)})),
            "spec.username",
        ),
        (
            "newline in username",
            spec("x", json!({"username": "alice\nadmin"})),
            "control characters",
        ),
        (
            "tab in group",
            spec("x", json!({"groups": ["dev\tops"]})),
            "control characters",
        ),
        (
            "space around username",
            spec("x", json!({"username": " alice"})),
            "white space",
        ),
        (
            "days",
            spec("x", json!({"validity": "7d"})),
            "duration such as 24h",
        ),
        (
            "negative validity",
            spec("x", json!({"validity": "-1h"})),
            "duration such as 24h",
        ),
        (
            "no unit",
            spec("x", json!({"validity": "100"})),
            "duration such as 24h",
        ),
        (
            "bad renewBefore",
            spec("x", json!({"renewBefore": "soon"})),
            "duration such as 24h",
        ),
        (
            "unknown key algorithm",
            spec("x", json!({"privateKey": {"algorithm": "DSA"}})),
            "spec.privateKey.algorithm",
        ),
        (
            "weak RSA",
            spec(
                "x",
                json!({"privateKey": {"algorithm": "RSA", "size": 1024}}),
            ),
            "RSA sizes are 2048, 3072 or 4096",
        ),
        (
            "Ed25519 with a size",
            spec(
                "x",
                json!({"privateKey": {"algorithm": "Ed25519", "size": 256}}),
            ),
            "Ed25519 keys have no size",
        ),
        (
            "invalid Secret name",
            spec("x", json!({"secretRef": {"name": "Bad_Name"}})),
            "valid object name",
        ),
        (
            "Secret key clash",
            spec(
                "x",
                json!({"secretRef": {"name": "x", "kubeconfigKeys": ["tls.key"]}}),
            ),
            "other than tls.crt",
        ),
        (
            "duplicate groups",
            spec("x", json!({"groups": ["dev", "dev"]})),
            "Duplicate value",
        ),
        (
            "hundreds of groups",
            spec("x", json!({"groups": groups})),
            "must have at most 20 items",
        ),
        (
            "reserved group",
            spec("x", json!({"groups": ["kubeconfig-uid:0000"]})),
            "added by the controller",
        ),
        (
            "roleBinding without namespace",
            spec(
                "x",
                json!({"authorization": {"roleBindings": [{"clusterRole": "view"}]}}),
            ),
            "namespace: Required value",
        ),
        (
            "roleBinding with two roles",
            spec(
                "x",
                json!({"authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view", "role": "x"}]}}),
            ),
            "exactly one of clusterRole and role",
        ),
        (
            "invalid namespace",
            spec(
                "x",
                json!({"authorization": {"roleBindings": [{"namespace": "Team A", "clusterRole": "view"}]}}),
            ),
            "valid namespace name",
        ),
        (
            "path in a role name",
            spec(
                "x",
                json!({"authorization": {"clusterRoleBindings": {"clusterRoles": ["../admin"]}}}),
            ),
            "must not be empty, contain '/'",
        ),
        (
            "missing secretRef",
            json!({"username": "x", "validity": "1h"}),
            "spec.secretRef: Required value",
        ),
    ]
}

#[tokio::test]
async fn malformed_objects_are_refused_and_others_keep_being_served() {
    let ca = TestCa::new("malformed-ca");
    let (admin, ns) = setup("malformed", &ca).await;
    for (i, (what, s, expected)) in malformed(&ns).into_iter().enumerate() {
        let (code, message) = refusal(create(&admin, &ns, &format!("bad-{i}"), s).await);
        assert_eq!(code, 422, "{what}: {message}");
        assert!(
            message.contains(expected),
            "{what}: expected {expected:?} in {message}"
        );
    }
    // What the schema cannot decide is reported in a condition.
    let in_condition = [
        ("huge", "99999999999999h", "longer than the maximum"),
        ("zero", "0s", "longer than zero"),
    ];
    for (name, validity, expected) in in_condition {
        apply(&admin, &ns, name, spec(name, json!({"validity": validity}))).await;
        let kc = wait_condition(
            &admin,
            &ns,
            name,
            "False",
            Some("InvalidSpec"),
            Duration::from_secs(10),
        )
        .await;
        let message = &kc.status.unwrap().conditions[0].message;
        assert!(
            message.contains("spec.validity") && message.contains(expected),
            "{name}: {message}"
        );
    }
    // The controller keeps serving.
    apply(&admin, &ns, "fine", spec("fine", json!({}))).await;
    wait_ready(&admin, &ns, "fine").await;
}

/// Every base64 or JWT word of 40 characters or more in `text` (PEM body lines, base64
/// values of a kubeconfig, tokens): what a leaked key or token would look like.
fn secret_material(text: &str) -> Vec<String> {
    text.split_whitespace()
        // Kubeconfig values are quoted.
        .map(|w| w.trim_matches('"'))
        .filter(|w| {
            w.len() >= 40
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=-_.".contains(c))
        })
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn keys_and_tokens_never_reach_logs_or_events() {
    let ca = TestCa::new("leak-ca");
    let (admin, ns) = setup("leak", &ca).await;
    // Issue, renew-worthy damage, policy refusal, bad spec, conflict, bad CA, deletion.
    apply(&admin, &ns, "a", spec("a", json!({}))).await;
    apply(
        &admin,
        &ns,
        "b",
        spec("b", json!({"privateKey": {"algorithm": "RSA"}})),
    )
    .await;
    // A token kubeconfig too, and one for a ServiceAccount that does not exist.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "flux"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch("tokens", &PatchParams::apply("tests"), &Patch::Apply(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority", "metadata": {"name": "tokens"},
            "spec": {"server": plane().server, "signer": {"serviceAccountToken": {}}}})))
        .await
        .unwrap();
    let token_spec = |sa: &str| json!({"authorityRef": {"name": "tokens"}, "serviceAccountRef": {"name": sa}, "validity": "10m", "secretRef": {"name": format!("{sa}-token")}});
    apply(&admin, &ns, "t", token_spec("flux")).await;
    apply(&admin, &ns, "t2", token_spec("nobody")).await;
    wait_ready(&admin, &ns, "t").await;
    wait_condition(
        &admin,
        &ns,
        "t2",
        "False",
        Some("ServiceAccountNotFound"),
        Duration::from_secs(10),
    )
    .await;
    wait_ready(&admin, &ns, "a").await;
    wait_ready(&admin, &ns, "b").await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    secrets
        .delete("a-kubeconfig", &Default::default())
        .await
        .unwrap();
    apply(
        &admin,
        &ns,
        "masters",
        spec("m", json!({"groups": ["system:masters"]})),
    )
    .await;
    apply(&admin, &ns, "zero", spec("z", json!({"validity": "0s"}))).await;
    let clash: Secret = serde_json::from_value(
        json!({"metadata": {"name": "c-kubeconfig"}, "stringData": {"x": "y"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &clash)
        .await
        .unwrap();
    apply(&admin, &ns, "c", spec("c", json!({}))).await;
    wait_condition(
        &admin,
        &ns,
        "c",
        "False",
        Some("SecretConflict"),
        Duration::from_secs(10),
    )
    .await;
    wait_ready(&admin, &ns, "a").await;
    // A CA Secret whose key does not match its certificate, then garbage.
    let other = TestCa::new("other");
    crate::put_ca_secret(&admin, &ns, "cluster-ca", &ca.cert_pem, &other.key_pem).await;
    // (Its certificate is still valid: kept, and the status says it cannot be renewed.)
    wait_condition(
        &admin,
        &ns,
        "b",
        "True",
        Some("RenewalBlocked"),
        Duration::from_secs(10),
    )
    .await;
    crate::put_ca_secret(&admin, &ns, "cluster-ca", "garbage", &ca.key_pem).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    crate::put_ca_secret(&admin, &ns, "cluster-ca", &ca.cert_pem, &ca.key_pem).await;
    wait_ready(&admin, &ns, "b").await;
    delete_and_wait(&admin, &ns, "b").await;

    // Everything secret that exists now or existed: issued keys, CA keys, a token.
    let mut material = Vec::new();
    for s in secrets.list(&ListParams::default()).await.unwrap() {
        for value in s.data.unwrap_or_default().values() {
            material.extend(secret_material(&String::from_utf8_lossy(&value.0)));
        }
    }
    material.extend(secret_material(&ca.key_pem));
    material.extend(secret_material(&other.key_pem));
    assert!(material.len() > 10, "the scan has something to look for");
    assert!(
        material.iter().any(|m| m.starts_with("eyJ")),
        "the scan includes the token"
    );

    let events = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(events.items.len() >= 4, "events were recorded");
    let events_text = serde_json::to_string(&events.items).unwrap();
    let statuses = serde_json::to_string(
        &Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let log = std::fs::read_to_string(plane().dir.path().join("controller.log")).unwrap();
    assert!(log.contains(&ns), "the log covers this test's objects");
    assert!(
        !log.contains('\u{1b}'),
        "terminal colour codes in a log written to a file"
    );
    for (what, text) in [
        ("controller log", &log),
        ("events", &events_text),
        ("Kubeconfig objects", &statuses),
    ] {
        // (Messages may name the PEM types expected; a PEM block itself must never appear.)
        assert!(
            !text.contains("PRIVATE KEY-----"),
            "a private key in the {what}"
        );
        assert!(!text.contains("eyJhbGciOi"), "a token in the {what}");
        for m in &material {
            assert!(!text.contains(m.as_str()), "secret material in the {what}");
        }
    }
}

/// The controller runs with the ClusterRole of `config/rbac` (the harness gives it that
/// ServiceAccount's identity): whatever a Kubeconfig and its authority allow, the API server
/// refuses it bindings to roles outside its `bind` list.
#[tokio::test]
async fn the_controller_cannot_bind_roles_outside_its_list() {
    let (admin, ns) = setup("bind-limit", &plane().ca).await;
    apply(
        &admin,
        &ns,
        "root",
        spec(
            "root",
            json!({"authorization": {"clusterRoleBindings": {"clusterRoles": ["cluster-admin"]}}}),
        ),
    )
    .await;
    let kc = wait_condition(
        &admin,
        &ns,
        "root",
        "False",
        Some("RBACFailed"),
        Duration::from_secs(10),
    )
    .await;
    let message = &kc.status.unwrap().conditions[0].message;
    assert!(
        message.contains("cluster-admin") && message.contains("refused"),
        "{message}"
    );
    let crb = format!("kubeconfig:{ns}:root:cluster-admin");
    assert!(
        Api::<ClusterRoleBinding>::all(admin.clone())
            .get_opt(&crb)
            .await
            .unwrap()
            .is_none()
    );
}

/// Renewal inputs that used to make the controller reissue without pause (renewBefore at or
/// above the validity, a validity close to the back-dating): every one is issued once and then
/// left alone; a validity too short to renew is refused with a message that says so.
#[tokio::test]
async fn no_renewal_input_makes_the_controller_reissue_without_pause() {
    let (admin, ns) = setup("storm", &plane().ca).await;
    let cases = [
        ("equal", json!({"validity": "2m", "renewBefore": "2m"})),
        ("longer", json!({"validity": "2m", "renewBefore": "10m"})),
        ("short", json!({"validity": "2m30s"})),
        ("hour", json!({"validity": "1h", "renewBefore": "1h"})),
    ];
    for (name, extra) in &cases {
        apply(&admin, &ns, name, spec(name, extra.clone())).await;
    }
    let mut versions = Vec::new();
    for (name, _) in &cases {
        let kc = wait_ready(&admin, &ns, name).await;
        let status = kc.status.unwrap();
        let issued = status.not_before.unwrap().0.as_second() + 300;
        let renewal = status.renewal_time.unwrap().0.as_second();
        assert!(
            renewal >= issued + 60,
            "{name}: renewal {renewal} comes at least a minute after issuance {issued}"
        );
        let s = secret(&admin, &ns, &format!("{name}-kubeconfig"))
            .await
            .unwrap();
        versions.push(s.resource_version());
    }
    // Twenty seconds later not one Secret was written again.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for ((name, _), version) in cases.iter().zip(versions) {
        let s = secret(&admin, &ns, &format!("{name}-kubeconfig"))
            .await
            .unwrap();
        assert_eq!(s.resource_version(), version, "{name} was written again");
    }
    // Too short to be renewed in time: refused, and it says what to ask for.
    apply(
        &admin,
        &ns,
        "tiny",
        spec("tiny", json!({"validity": "0.0000000001h"})),
    )
    .await;
    let tiny = wait_condition(
        &admin,
        &ns,
        "tiny",
        "False",
        Some("InvalidSpec"),
        Duration::from_secs(10),
    )
    .await;
    let (_, _, message) = crate::ready_condition(&tiny).unwrap();
    assert!(message.contains("at least 2m"), "{message}");
}

/// The finalizer cannot be taken off by a requester (or anyone but the controller), and
/// whatever a Kubeconfig bound is removed within seconds once it is gone, however it went.
#[tokio::test]
async fn bindings_never_outlive_their_kubeconfig() {
    let (admin, ns) = setup("orphans", &plane().ca).await;
    let suffix = &ns[ns.len() - 6..];
    let user = format!("rita-{suffix}");
    let as_user = team_member(&admin, &ns, &user, &["susan"]).await;
    let wanted = json!({"authorityRef": {"name": "cluster-ca"}, "username": "susan", "validity": "1h",
        "secretRef": {"name": "susan-kubeconfig"},
        "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]}});
    eventually(Duration::from_secs(10), "the requester may create", || {
        let (client, ns, wanted) = (as_user.clone(), ns.clone(), wanted.clone());
        async move {
            create(&client, &ns, "susan", wanted)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let kc = wait_ready(&admin, &ns, "susan").await;
    assert!(
        kc.finalizers()
            .iter()
            .any(|f| f == "kubeconfig-authority.dev/cleanup")
    );
    // Neither the requester nor an administrator may drop the finalizer.
    let drop_finalizer = json!({"metadata": {"finalizers": null}});
    for (who, client) in [("requester", &as_user), ("administrator", &admin)] {
        let (code, message) = refusal(
            Api::<Kubeconfig>::namespaced(client.clone(), &ns)
                .patch(
                    "susan",
                    &PatchParams::default(),
                    &Patch::Merge(&drop_finalizer),
                )
                .await,
        );
        assert!(code == 403 || code == 422, "{who}: {code} {message}");
        assert!(
            message.contains("only the kubeconfig-authority controller"),
            "{who}: {message}"
        );
    }
    // An orphan: labelled bindings of a Kubeconfig that no longer exists (as a controller
    // that was not running when its object went would leave them).
    let orphan_uid = "00000000-0000-4000-8000-0000000dead0";
    let labelled = |kind: &str, name: &str, namespace: Option<&str>| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "kubeconfig-authority", "kubeconfig-authority.dev/kubeconfig-uid": orphan_uid},
                "annotations": {"kubeconfig-authority.dev/kubeconfig": format!("{ns}/gone")}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": format!("kubeconfig-uid:{orphan_uid}")}],
        })
    };
    grant(
        &admin,
        labelled("RoleBinding", "kubeconfig:orphan", Some(&ns)),
    )
    .await;
    grant(
        &admin,
        labelled(
            "ClusterRoleBinding",
            &format!("kubeconfig:{ns}:orphan"),
            None,
        ),
    )
    .await;
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "the orphaned bindings removed",
        || async {
            let rb = Api::<RoleBinding>::namespaced(admin.clone(), &ns)
                .get_opt("kubeconfig:orphan")
                .await
                .unwrap();
            let crb = Api::<ClusterRoleBinding>::all(admin.clone())
                .get_opt(&format!("kubeconfig:{ns}:orphan"))
                .await
                .unwrap();
            if rb.is_none() && crb.is_none() {
                Ok(())
            } else {
                Err("still there".to_string())
            }
        },
    )
    .await;
    println!("orphaned bindings removed in {:?}", started.elapsed());
    // The live Kubeconfig's own binding is left alone.
    let selector = ListParams::default().labels(&format!(
        "kubeconfig-authority.dev/kubeconfig-uid={}",
        kc.uid().unwrap()
    ));
    assert_eq!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .list(&selector)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

/// A user who may request Kubeconfigs in `ns` and bind `view` and `edit` there, and claim the
/// usernames `identities` (a team member, as the README sets one up). Returns their client.
pub(crate) async fn team_member(
    admin: &Client,
    ns: &str,
    user: &str,
    identities: &[&str],
) -> Client {
    for (binding, role) in [
        ("requester", "kubeconfig-authority:requester"),
        ("binder", "kubeconfig-authority:namespace-binder"),
    ] {
        grant(admin, user_binding(binding, Some(ns), role, user)).await;
    }
    let claims = format!("identities-{user}");
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": claims},
        "rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": identities}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .patch(
            &claims,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&role),
        )
        .await
        .unwrap();
    grant(admin, user_binding(&claims, None, &claims, user)).await;
    plane().client_for(user, &[]).await
}

/// Creates a Kubeconfig as `client`, retrying while the requester's new rights reach the
/// authorizer.
pub(crate) async fn create_as(client: &Client, ns: &str, name: &str, spec: Value) {
    eventually(Duration::from_secs(10), name, || {
        let (client, ns, spec) = (client.clone(), ns.to_string(), spec.clone());
        async move {
            create(&client, &ns, name, spec)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await;
}

async fn label(admin: &Client, ns: &str, labels: Value) {
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
}

fn distributed(kc: &Kubeconfig) -> Option<(String, String, String)> {
    kc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Distributed")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// `spec.distribution` puts the requester's credential nowhere they could not have written it:
/// only into namespaces the authority's policy allows (default none) where the credential's
/// own identity may write that Secret, never `kube-system`, never over a name a Kubeconfig of
/// that namespace uses.
#[tokio::test]
async fn copies_go_only_where_their_identity_could_write_them() {
    let ca = &plane().ca;
    let (admin, ns) = setup("copies", ca).await;
    let suffix = ns[ns.len() - 6..].to_string();
    let (user, identity) = (format!("rita-{suffix}"), format!("sue-{suffix}"));
    let as_rita = team_member(&admin, &ns, &user, &[&identity]).await;
    // Two namespaces of the team; the identity may write Secrets only in the first.
    let (_, team_b) = setup("copies-b", ca).await;
    let foreign = plane().namespace("copies-f").await;
    for n in [&team_b, &foreign] {
        label(&admin, n, json!({"team": suffix})).await;
    }
    grant(
        &admin,
        user_binding("sue-edits", Some(&team_b), "edit", &identity),
    )
    .await;

    // Everywhere, asked by a limited user: the authority allows copies nowhere yet.
    let wanted = json!({"authorityRef": {"name": "cluster-ca"}, "username": identity,
        "validity": "1h", "secretRef": {"name": "sue-kubeconfig"},
        "distribution": {"namespaceSelector": {}}});
    create_as(&as_rita, &ns, "sue", wanted).await;
    wait_ready(&admin, &ns, "sue").await;
    let kc = eventually(Duration::from_secs(10), "distribution refused", || {
        let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
        async move {
            let kc = api.get("sue").await.map_err(|e| e.to_string())?;
            match distributed(&kc) {
                Some((s, r, _)) if s == "False" && r == "DistributionRefused" => Ok(kc),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let message = distributed(&kc).unwrap().2;
    assert!(
        message.contains("kube-system (not matched by the authority's policy"),
        "{message}"
    );
    for n in ["kube-system", "default", team_b.as_str(), foreign.as_str()] {
        assert!(
            secret(&admin, n, "sue-kubeconfig").await.is_none(),
            "no copy in {n}"
        );
    }

    // The admin allows the team's namespaces: a copy where the identity may write, none where
    // it may not.
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::apply("tests-distribution"),
            &Patch::Apply(json!({"apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
                "metadata": {"name": "cluster-ca"},
                "spec": {"policy": {"distributionNamespaceSelector": {"matchLabels": {"team": suffix}}}}})),
        )
        .await
        .unwrap();
    let copy = eventually(Duration::from_secs(10), "the copy in team-b", || {
        let (admin, team_b) = (admin.clone(), team_b.clone());
        async move {
            secret(&admin, &team_b, "sue-kubeconfig")
                .await
                .ok_or("none".to_string())
        }
    })
    .await;
    let primary = secret(&admin, &ns, "sue-kubeconfig").await.unwrap();
    assert_eq!(copy.data, primary.data);
    let kc = eventually(Duration::from_secs(10), "one copy counted", || {
        let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
        async move {
            let kc = api.get("sue").await.map_err(|e| e.to_string())?;
            match kc.status.as_ref().and_then(|s| s.distributed_copies) {
                Some(1) => Ok(kc),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let message = distributed(&kc).unwrap().2;
    assert!(
        message.contains(&format!(
            "{foreign} ({identity} may not create Secret sue-kubeconfig"
        )),
        "{message}"
    );
    for n in ["kube-system", foreign.as_str()] {
        assert!(
            secret(&admin, n, "sue-kubeconfig").await.is_none(),
            "no copy in {n}"
        );
    }

    // A Kubeconfig of team-b that uses that Secret name gets it: the copy makes way.
    apply(
        &admin,
        &team_b,
        "claim",
        spec("claimer", json!({"secretRef": {"name": "sue-kubeconfig"}})),
    )
    .await;
    wait_ready(&admin, &team_b, "claim").await;
    let claimed = secret(&admin, &team_b, "sue-kubeconfig").await.unwrap();
    assert_eq!(
        claimed.owner_references()[0].name,
        "claim",
        "the Secret is the claimer's own"
    );
    let kc = eventually(Duration::from_secs(10), "the copy given up", || {
        let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
        async move {
            let kc = api.get("sue").await.map_err(|e| e.to_string())?;
            match (
                kc.status.as_ref().and_then(|s| s.distributed_copies),
                distributed(&kc),
            ) {
                (None, Some((_, _, m))) if m.contains("a Kubeconfig there writes its own") => {
                    Ok(kc)
                }
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(distributed(&kc).unwrap().2.contains(&team_b));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = secret(&admin, &team_b, "sue-kubeconfig").await.unwrap();
    assert_eq!(still.owner_references()[0].name, "claim", "not taken back");
    wait_ready(&admin, &team_b, "claim").await;
}

/// A team member with `edit` in their namespace, set up as the README says (a ClusterAuthority
/// whose CA Secret lives in the controller's namespace), cannot read any CA key, and neither
/// can the kubeconfig they get. An Authority that keeps its CA key in a team namespace is
/// flagged.
#[tokio::test]
async fn a_requester_following_the_readme_cannot_reach_a_ca_key() {
    let plane = plane();
    let admin = plane.admin().await;
    let ns = plane.namespace("readme").await;
    let suffix = ns[ns.len() - 6..].to_string();
    let system = "kubeconfig-authority-system";
    // config/samples/authority.yaml, under a name of this test's own, its CA in `system`.
    let mut sample: Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/authority.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let name = format!("readme-{suffix}");
    sample["metadata"]["name"] = name.clone().into();
    sample["spec"]["server"] = plane.server.clone().into();
    assert_eq!(
        sample["spec"]["signer"]["caSecretRef"]["namespace"], system,
        "the sample keeps the CA key in the controller's namespace"
    );
    sample["spec"]["signer"]["caSecretRef"]["name"] = name.clone().into();
    crate::put_ca_secret(&admin, system, &name, &plane.ca.cert_pem, &plane.ca.key_pem).await;
    let authority: ClusterAuthority = serde_json::from_value(sample).unwrap();
    Api::<ClusterAuthority>::all(admin.clone())
        .create(&PostParams::default(), &authority)
        .await
        .unwrap();

    let user = format!("tess-{suffix}");
    let as_tess = team_member(&admin, &ns, &user, &["susan"]).await;
    grant(&admin, user_binding("tess-edits", Some(&ns), "edit", &user)).await;
    create_as(
        &as_tess,
        &ns,
        "susan",
        json!({"authorityRef": {"kind": "ClusterAuthority", "name": name}, "username": "susan",
            "validity": "1h", "secretRef": {"name": "susan-kubeconfig"},
            "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "edit"}]}}),
    )
    .await;
    wait_ready(&admin, &ns, "susan").await;
    // Tess reads her kubeconfig (edit reads Secrets in her namespace) ...
    let kubeconfig = eventually(Duration::from_secs(10), "tess reads her kubeconfig", || {
        let (client, ns) = (as_tess.clone(), ns.clone());
        async move {
            Ok::<_, String>(
                secret(&client, &ns, "susan-kubeconfig")
                    .await
                    .ok_or("none")?,
            )
        }
    })
    .await;
    let issued = client_from_kubeconfig(
        &String::from_utf8(kubeconfig.data.unwrap()["kubeconfig"].0.clone()).unwrap(),
    )
    .await;
    // ... and no Secret of her namespace holds a CA key; neither she nor the kubeconfig can
    // read the controller's namespace.
    for s in Api::<Secret>::namespaced(as_tess.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let keys: Vec<&String> = s
            .data
            .as_ref()
            .map(|d| d.keys().collect())
            .unwrap_or_default();
        assert!(
            !keys.iter().any(|k| *k == "ca.key"),
            "{} holds a CA key",
            s.name_any()
        );
    }
    for (who, client) in [("tess", &as_tess), ("her kubeconfig", &issued)] {
        let secrets = Api::<Secret>::namespaced(client.clone(), system);
        assert_eq!(
            refusal(secrets.get(&name).await).0,
            403,
            "{who} reads the CA"
        );
        assert_eq!(
            refusal(secrets.list(&ListParams::default()).await).0,
            403,
            "{who} lists the controller's Secrets"
        );
    }
    // The ClusterAuthority is not flagged; an Authority with its CA key in a team namespace is.
    let cluster = Api::<ClusterAuthority>::all(admin.clone())
        .get(&name)
        .await
        .unwrap();
    assert!(
        cluster
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .all(|c| c.status == "True"),
        "a CA key in the controller's namespace is not flagged"
    );
    let (_, team) = setup("readme-team", &plane.ca).await;
    apply(&admin, &team, "local", spec("local", json!({}))).await;
    wait_ready(&admin, &team, "local").await;
    let flagged = eventually(Duration::from_secs(10), "the Authority flagged", || {
        let api = Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &team);
        async move {
            let a = api.get("cluster-ca").await.map_err(|e| e.to_string())?;
            a.status
                .unwrap_or_default()
                .conditions
                .into_iter()
                .find(|c| c.type_ == "CAKeyIsolated" && c.status == "False")
                .ok_or("not flagged".to_string())
        }
    })
    .await;
    assert_eq!(flagged.reason, "CAKeyWithRequesters");
    assert!(
        flagged.message.contains(&format!("{team}/cluster-ca")),
        "{}",
        flagged.message
    );
    let events = Api::<Event>::namespaced(admin.clone(), &team)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CAKeyWithRequesters")
                && e.type_.as_deref() == Some("Warning")),
        "a Warning event on the Authority"
    );
    Api::<ClusterAuthority>::all(admin.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
}

/// Whatever stops a Kubeconfig from being Ready, it holds neither a credential nor bindings;
/// while only the authority's CA is away, a valid credential is kept (Ready, RenewalBlocked).
#[tokio::test]
async fn a_kubeconfig_that_is_not_ready_holds_neither_credential_nor_bindings() {
    let (admin, ns) = setup("holds", &plane().ca).await;
    let binds = |extra: Value| {
        let mut s = spec(
            "holder",
            json!({"authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]}}),
        );
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    // Every binding that appears in the namespace at any moment, by the Kubeconfig it serves.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let recorder = {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let config = watcher::Config::default().labels("kubeconfig-authority.dev/kubeconfig-uid");
        let bindings = watcher(Api::<RoleBinding>::namespaced(admin.clone(), &ns), config);
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut bindings = std::pin::pin!(bindings.applied_objects());
            while let Some(Ok(b)) = bindings.next().await {
                if let Some(uid) = b.labels().get("kubeconfig-authority.dev/kubeconfig-uid") {
                    seen.lock().unwrap().insert(uid.clone());
                }
            }
        })
    };
    // The authority allows at most a day.
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::apply("tests-policy"),
            &Patch::Apply(
                json!({"apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
                "metadata": {"name": "cluster-ca"}, "spec": {"policy": {"maxValidity": "24h"}}}),
            ),
        )
        .await
        .unwrap();
    // Refused from the start: an invalid validity; a validity the authority's policy refuses;
    // a Secret name someone else uses; a role the controller may not bind.
    let clash: Secret =
        serde_json::from_value(json!({"metadata": {"name": "taken"}, "stringData": {"x": "y"}}))
            .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &clash)
        .await
        .unwrap();
    let cases = [
        (
            "short",
            binds(json!({"validity": "1m", "secretRef": {"name": "short"}})),
            "InvalidSpec",
        ),
        (
            "long",
            binds(json!({"validity": "48h", "secretRef": {"name": "long"}})),
            "PolicyViolation",
        ),
        (
            "clash",
            binds(json!({"secretRef": {"name": "taken"}})),
            "SecretConflict",
        ),
        (
            "admin",
            binds(json!({"secretRef": {"name": "admin"},
                "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "admin"}]}})),
            "RBACFailed",
        ),
    ];
    for (name, s, reason) in &cases {
        apply(&admin, &ns, name, s.clone()).await;
        wait_condition(
            &admin,
            &ns,
            name,
            "False",
            Some(reason),
            Duration::from_secs(10),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, _, _) in &cases {
        let secret_name = if *name == "clash" { "never" } else { name };
        nothing_issued(&admin, &ns, name, secret_name).await;
        let uid = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
            .get(name)
            .await
            .unwrap()
            .uid()
            .unwrap();
        assert!(
            !seen.lock().unwrap().contains(&uid),
            "{name}: a binding existed for a moment"
        );
    }
    let clash_secret = secret(&admin, &ns, "taken").await.unwrap();
    assert!(
        clash_secret.owner_references().is_empty(),
        "someone else's Secret untouched"
    );

    // Ready with its binding, then refused by a tightened policy: both go.
    apply(
        &admin,
        &ns,
        "good",
        binds(json!({"secretRef": {"name": "good"}})),
    )
    .await;
    wait_ready(&admin, &ns, "good").await;
    let uid = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .get("good")
        .await
        .unwrap()
        .uid()
        .unwrap();
    // The recorder sees bindings that exist (so its silence above means something).
    eventually(
        Duration::from_secs(10),
        "the recorder saw good's binding",
        || {
            let found = seen.lock().unwrap().contains(&uid);
            async move {
                if found {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            }
        },
    )
    .await;
    recorder.abort();
    let bound =
        ListParams::default().labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    assert_eq!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .list(&bound)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // The CA Secret goes: the credential is still valid, so it stays, with its binding.
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .delete("cluster-ca", &Default::default())
        .await
        .unwrap();
    let kc = wait_condition(
        &admin,
        &ns,
        "good",
        "True",
        Some("RenewalBlocked"),
        Duration::from_secs(10),
    )
    .await;
    let message = &kc.status.unwrap().conditions[0].message;
    assert!(
        message.contains("cannot be renewed now") && message.contains("cluster-ca"),
        "{message}"
    );
    assert!(secret(&admin, &ns, "good").await.is_some());
    assert_eq!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .list(&bound)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    crate::put_ca_secret(
        &admin,
        &ns,
        "cluster-ca",
        &plane().ca.cert_pem,
        &plane().ca.key_pem,
    )
    .await;
    wait_condition(
        &admin,
        &ns,
        "good",
        "True",
        Some("Issued"),
        Duration::from_secs(10),
    )
    .await;
    Api::<kubeconfig_authority::api::Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::apply("tests-policy"),
            &Patch::Apply(json!({"apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
                "metadata": {"name": "cluster-ca"}, "spec": {"policy": {"allowedClusterRoles": ["edit"]}}})),
        )
        .await
        .unwrap();
    let kc = wait_condition(
        &admin,
        &ns,
        "good",
        "False",
        Some("PolicyViolation"),
        Duration::from_secs(10),
    )
    .await;
    let status = kc.status.unwrap();
    assert!(
        status.serial_number.is_none() && status.secret_name.is_none(),
        "{status:?}"
    );
    eventually(
        Duration::from_secs(10),
        "credential and binding withdrawn",
        || {
            let (admin, ns) = (admin.clone(), ns.clone());
            async move { nothing_issued_yet(&admin, &ns, "good", "good").await }
        },
    )
    .await;
}

/// Whether neither the Secret `secret_name` nor a binding of the Kubeconfig `name` exists.
async fn nothing_issued_yet(
    admin: &Client,
    ns: &str,
    name: &str,
    secret_name: &str,
) -> Result<(), String> {
    if secret(admin, ns, secret_name).await.is_some() {
        return Err(format!("Secret {secret_name} exists"));
    }
    let uid = Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|kc| kc.uid());
    let Some(uid) = uid else {
        return Ok(());
    };
    let selector =
        ListParams::default().labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    let namespaced = Api::<RoleBinding>::all(admin.clone())
        .list(&selector)
        .await
        .map_err(|e| e.to_string())?
        .items
        .len();
    let cluster = Api::<ClusterRoleBinding>::all(admin.clone())
        .list(&selector)
        .await
        .map_err(|e| e.to_string())?
        .items
        .len();
    match namespaced + cluster {
        0 => Ok(()),
        n => Err(format!("{n} bindings left")),
    }
}

/// Kubernetes checks impersonation of `system:serviceaccount:<ns>:<name>` on the resource
/// `serviceaccounts`, not `users`: so does the guard.
#[tokio::test]
async fn service_account_usernames_need_the_right_to_impersonate_that_service_account() {
    let (admin, ns) = setup("sa-user", &plane().ca).await;
    let suffix = ns[ns.len() - 6..].to_string();
    let sa_user = format!("system:serviceaccount:{ns}:robot");
    // Impersonation of `users` by that name is what the old guard checked; Kubernetes would
    // not let this user act as the ServiceAccount.
    let user = format!("uma-{suffix}");
    let as_uma = team_member(&admin, &ns, &user, &[&sa_user]).await;
    let wanted = spec(
        &sa_user,
        json!({"groups": [], "secretRef": {"name": "robot"}}),
    );
    let (code, message) = eventually(Duration::from_secs(10), "refused", || {
        let (client, ns, wanted) = (as_uma.clone(), ns.clone(), wanted.clone());
        async move {
            match create(&client, &ns, "robot", wanted).await {
                Err(kube::Error::Api(s)) if s.message.contains("impersonate") => {
                    Ok((s.code, s.message))
                }
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("that ServiceAccount"), "{message}");
    // With impersonate on that ServiceAccount, admitted (the default policy then refuses a
    // system: name, which is the authority's business).
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "robot-impersonator"},
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"], "resourceNames": ["robot"]}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    grant(
        &admin,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "robot-impersonator", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "robot-impersonator"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }),
    )
    .await;
    create_as(&as_uma, &ns, "robot", wanted).await;
    wait_condition(
        &admin,
        &ns,
        "robot",
        "False",
        Some("PolicyViolation"),
        Duration::from_secs(10),
    )
    .await;
}

/// A token kubeconfig's roles are bound to its ServiceAccount, so asking for one is checked as
/// a limited team member: only for an account whose tokens she may request herself, and only
/// with roles she may bind. What she gets, the token, has exactly those rights.
#[tokio::test]
async fn token_kubeconfigs_bind_only_what_their_requester_could() {
    let (admin, ns) = crate::gitops::token_setup("token-rights").await;
    crate::gitops::service_account(&admin, &ns, "other", json!({})).await;
    let tom = team_member(&admin, &ns, "tom", &[]).await;
    // Tom may request tokens of `flux` in his namespace, not of `other`.
    let tokens = format!("flux-tokens-{ns}");
    crate::cluster_role(
        &admin,
        &tokens,
        json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"], "resourceNames": ["flux"]}]),
    )
    .await;
    grant(
        &admin,
        user_binding("flux-tokens", Some(&ns), &tokens, "tom"),
    )
    .await;
    let spec = |sa: &str, role: &str| {
        json!({
            "authorityRef": {"name": "tokens"}, "serviceAccountRef": {"name": sa},
            "validity": "10m", "secretRef": {"name": format!("{sa}-{role}")},
            "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": role}]},
        })
    };
    // Another account: refused at admission, nothing created.
    let (code, message) = refusal(create(&tom, &ns, "other", spec("other", "view")).await);
    assert_eq!(code, 403, "{message}");
    // A role she may not bind, for her account: refused too.
    let (code, message) = refusal(create(&tom, &ns, "flux-admin", spec("flux", "admin")).await);
    assert_eq!(code, 403, "{message}");
    assert!(
        Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Her account with view: admitted; the token can read ConfigMaps there, and no Secrets.
    create_as(&tom, &ns, "flux", spec("flux", "view")).await;
    wait_ready(&admin, &ns, "flux").await;
    let token = client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "flux-view").await).await;
    until_code("the token reads ConfigMaps", 200, || {
        crate::list_configmaps(token.clone(), ns.clone())
    })
    .await;
    let secrets = Api::<Secret>::namespaced(token.clone(), &ns);
    assert_eq!(crate::code(secrets.list(&Default::default()).await), 403);
}
