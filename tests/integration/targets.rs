//! Many clusters: Kubeconfigs for a target cluster (an authority's `spec.target`), with their
//! bindings, tokens and cleanup in that target. Two more real API servers (B and C, each with
//! its own etcd and CA) stand beside the controller's cluster (A).

use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    core::v1::{ConfigMap, Pod, Secret, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::{ClusterAuthority, Kubeconfig, TargetContact};
use serde_json::{Value, json};

use crate::{
    apply, code, create_namespace, eventually, kubeconfig_of, plane, put_ca_secret, setup, spec,
    support::{ControlPlane, client_from_kubeconfig},
    wait_condition, wait_ready,
};

/// A ClusterAuthority in A for the target `cluster`: it signs with the target's CA and binds in
/// the target, whose admin kubeconfig is in Secret `<name>-admin` (key `value`, as Cluster
/// API names it), both in `system`.
async fn target_authority(
    admin: &Client,
    system: &str,
    name: &str,
    cluster: &ControlPlane,
    signer: Value,
) {
    let kubeconfig = cluster.admin_kubeconfig();
    target_authority_with(admin, system, name, &kubeconfig, &cluster.ca, signer).await;
}

/// [`target_authority`] with the target's admin `kubeconfig` and its CA given apart.
async fn target_authority_with(
    admin: &Client,
    system: &str,
    name: &str,
    kubeconfig: &str,
    ca: &crate::support::TestCa,
    signer: Value,
) {
    put_ca_secret(
        admin,
        system,
        &format!("{name}-ca"),
        &ca.cert_pem,
        &ca.key_pem,
    )
    .await;
    let kubeconfig: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-admin")},
        "stringData": {"value": kubeconfig},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), system)
        .create(&PostParams::default(), &kubeconfig)
        .await
        .unwrap();
    let signer = if signer.is_null() {
        json!({"caSecretRef": {"name": format!("{name}-ca"), "namespace": system}})
    } else {
        signer
    };
    let authority: ClusterAuthority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "ClusterAuthority",
        "metadata": {"name": name},
        "spec": {
            "target": {"kubeconfigSecretRef": {"name": format!("{name}-admin"), "namespace": system, "key": "value"}},
            "signer": signer,
            "policy": {"allowedClusterRoles": ["view", "edit"]},
        },
    }))
    .unwrap();
    Api::<ClusterAuthority>::all(admin.clone())
        .create(&PostParams::default(), &authority)
        .await
        .unwrap();
}

/// Waits (the report runs every 30 s) until a ClusterAuthority's `status.target` says its
/// target is `reachable` or not, and returns it.
async fn reported(admin: &Client, authority: &str, reachable: bool) -> TargetContact {
    let api = Api::<ClusterAuthority>::all(admin.clone());
    eventually(
        Duration::from_secs(75),
        &format!("{authority} reports its target reachable: {reachable}"),
        || {
            let api = api.clone();
            async move {
                let target = api
                    .get(authority)
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .and_then(|s| s.target);
                match target {
                    Some(t) if t.reachable == reachable => Ok(t),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// The bindings labelled with a Kubeconfig's UID in a cluster: (cluster-wide, namespaced).
async fn bindings(client: &Client, uid: &str) -> (Vec<ClusterRoleBinding>, Vec<RoleBinding>) {
    let mine =
        ListParams::default().labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    let cluster = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&mine)
        .await
        .unwrap()
        .items;
    let namespaced = Api::<RoleBinding>::all(client.clone())
        .list(&mine)
        .await
        .unwrap()
        .items;
    (cluster, namespaced)
}

async fn uid_of(admin: &Client, ns: &str, name: &str) -> String {
    Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .get(name)
        .await
        .unwrap()
        .uid()
        .unwrap()
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

/// Waits until the Kubeconfig `name` is gone.
async fn gone(admin: &Client, ns: &str, name: &str, timeout: Duration) {
    eventually(timeout, &format!("{name} deleted"), || {
        let api = Api::<Kubeconfig>::namespaced(admin.clone(), ns);
        async move {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(kc) => Err(format!(
                    "still there: {:?}",
                    kc.status.map(|s| s.conditions)
                )),
            }
        }
    })
    .await;
}

/// Waits until the Kubeconfig `name` is Ready with its bindings in the target whose admin
/// kubeconfig is the Secret `target` (`None`: the controller's own cluster).
async fn moved(admin: &Client, ns: &str, name: &str, target: Option<&str>) {
    eventually(
        Duration::from_secs(15),
        &format!("{name} Ready in {target:?}"),
        || {
            let api = Api::<Kubeconfig>::namespaced(admin.clone(), ns);
            async move {
                let kc = api.get(name).await.map_err(|e| e.to_string())?;
                let ready = crate::ready_condition(&kc);
                let at = kc.status.as_ref().and_then(|s| s.target.as_ref());
                match ready {
                    Some((status, ..))
                        if status == "True" && at.map(|t| t.name.as_str()) == target =>
                    {
                        Ok(())
                    }
                    _ => Err(format!("{ready:?} in {at:?}")),
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bindings_tokens_and_cleanup_happen_in_the_target_cluster() {
    let a = plane();
    let (admin, ns) = setup("targets", &a.ca).await;
    let suffix = ns[ns.len() - 6..].to_string();
    let system = a.namespace("targets-system").await;
    let (b, c) = (
        ControlPlane::start_other().await,
        ControlPlane::start_other().await,
    );
    let (admin_b, admin_c) = (b.admin().await, c.admin().await);
    for name in ["apps", "other"] {
        create_namespace(&admin_b, name).await;
    }
    let (to_b, to_c) = (format!("b-{suffix}"), format!("c-{suffix}"));
    target_authority(&admin, &system, &to_b, &b, Value::Null).await;
    target_authority(&admin, &system, &to_c, &c, Value::Null).await;
    let for_target = |authority: &str, user: &str, authorization: Value| {
        spec(
            user,
            json!({"authorityRef": {"kind": "ClusterAuthority", "name": authority},
                "authorization": authorization}),
        )
    };

    // `view` cluster-wide and `edit` in B's namespace apps: exactly that, on B only.
    let granted = json!({"clusterRoleBindings": {"clusterRoles": ["view"]},
        "roleBindings": [{"namespace": "apps", "clusterRole": "edit"}]});
    apply(&admin, &ns, "alice", for_target(&to_b, "alice", granted)).await;
    let kc = wait_ready(&admin, &ns, "alice").await;
    let status = kc.status.clone().unwrap();
    assert_eq!(
        status.target.as_ref().map(|t| t.name.as_str()),
        Some(&*format!("{to_b}-admin"))
    );
    let yaml = kubeconfig_of(&admin, &ns, "alice-kubeconfig").await;
    assert!(yaml.contains(&b.server), "the kubeconfig points at B");
    let alice = client_from_kubeconfig(&yaml).await;
    let review = Api::<SelfSubjectReview>::all(alice.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("B knows alice");
    assert_eq!(
        review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .as_deref(),
        Some("alice")
    );
    Api::<Pod>::all(alice.clone())
        .list(&ListParams::default())
        .await
        .expect("view cluster-wide on B");
    Api::<ConfigMap>::namespaced(alice.clone(), "apps")
        .create(&PostParams::default(), &config_map("by-alice"))
        .await
        .expect("edit in B's apps");
    let refused = Api::<ConfigMap>::namespaced(alice.clone(), "other")
        .create(&PostParams::default(), &config_map("by-alice"))
        .await;
    assert_eq!(code(refused), 403, "no edit in B's other");
    // The same certificate means nothing to A.
    let on_a = client_from_kubeconfig(
        &yaml
            .replace(&b.server, &a.server)
            .replace(&base64_pem(&b.ca.cert_pem), &base64_pem(&a.ca_cert_pem)),
    )
    .await;
    let refused = Api::<Pod>::namespaced(on_a, &ns)
        .list(&ListParams::default())
        .await;
    assert_eq!(code(refused), 401, "A does not know alice's certificate");
    let uid = uid_of(&admin, &ns, "alice").await;
    let (in_b_cluster, in_b_namespaced) = bindings(&admin_b, &uid).await;
    assert_eq!((in_b_cluster.len(), in_b_namespaced.len()), (1, 1));
    let (in_a_cluster, in_a_namespaced) = bindings(&admin, &uid).await;
    assert!(
        in_a_cluster.is_empty() && in_a_namespaced.is_empty(),
        "nothing bound in A"
    );

    // Drift in B is repaired within 5 s: a binding deleted, a subject added.
    let crb = in_b_cluster[0].name_any();
    Api::<ClusterRoleBinding>::all(admin_b.clone())
        .delete(&crb, &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the binding in B is back", || {
        let api = Api::<ClusterRoleBinding>::all(admin_b.clone());
        let crb = crb.clone();
        async move {
            match api.get_opt(&crb).await.map_err(|e| e.to_string())? {
                Some(b) if b.metadata.deletion_timestamp.is_none() => Ok(()),
                _ => Err("not yet".into()),
            }
        }
    })
    .await;
    let rb = &in_b_namespaced[0];
    let mut subjects = serde_json::to_value(&rb.subjects).unwrap();
    subjects
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}));
    Api::<RoleBinding>::namespaced(admin_b.clone(), "apps")
        .patch(
            &rb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"subjects": subjects})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the subject added in B is gone",
        || {
            let api = Api::<RoleBinding>::namespaced(admin_b.clone(), "apps");
            let name = rb.name_any();
            async move {
                let rb = api.get(&name).await.map_err(|e| e.to_string())?;
                let names: Vec<String> = rb
                    .subjects
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                if names.iter().any(|n| n == "mallory") {
                    Err(format!("{names:?}"))
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;

    // The target's admin kubeconfig changes (rotated) and is followed without a restart: a
    // credential that may not bind stops the repair of a deleted binding; the admin one again
    // repairs it.
    let admin_secret = |kubeconfig: String| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": format!("{to_b}-admin")},
            "stringData": {"value": kubeconfig}}))
        .unwrap()
    };
    let secrets = Api::<Secret>::namespaced(admin.clone(), &system);
    let rotate = |kubeconfig: String| {
        let (secrets, secret) = (secrets.clone(), admin_secret(kubeconfig));
        async move {
            secrets
                .replace(
                    &secret.metadata.name.clone().unwrap(),
                    &PostParams::default(),
                    &secret,
                )
                .await
                .unwrap();
        }
    };
    rotate(b.kubeconfig_for("nobody", &[])).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Api::<ClusterRoleBinding>::all(admin_b.clone())
        .delete(&crb, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        Api::<ClusterRoleBinding>::all(admin_b.clone())
            .get_opt(&crb)
            .await
            .unwrap()
            .is_none(),
        "a credential without rights repairs nothing"
    );
    rotate(b.admin_kubeconfig()).await;
    eventually(
        Duration::from_secs(15),
        "repaired with the rotated admin credential",
        || {
            let api = Api::<ClusterRoleBinding>::all(admin_b.clone());
            let crb = crb.clone();
            async move {
                match api.get_opt(&crb).await.map_err(|e| e.to_string())? {
                    Some(_) => Ok(()),
                    None => Err("not yet".into()),
                }
            }
        },
    )
    .await;

    // A role removed from the spec is unbound in B.
    apply(
        &admin,
        &ns,
        "alice",
        for_target(
            &to_b,
            "alice",
            json!({"roleBindings": [{"namespace": "apps", "clusterRole": "edit"}]}),
        ),
    )
    .await;
    eventually(Duration::from_secs(10), "view unbound in B", || {
        let (admin_b, uid) = (admin_b.clone(), uid.clone());
        async move {
            let (cluster, namespaced) = bindings(&admin_b, &uid).await;
            if cluster.is_empty() && namespaced.len() == 1 {
                Ok(())
            } else {
                Err(format!("{} and {}", cluster.len(), namespaced.len()))
            }
        }
    })
    .await;

    // The cluster of the bindings changes (the Kubeconfig names another authority): what was
    // bound in the one left goes. A to B, B to C, C back to A.
    let view_here = json!({"roleBindings": [{"namespace": ns, "clusterRole": "view"}]});
    let view_there = json!({"clusterRoleBindings": {"clusterRoles": ["view"]}});
    let clusters = [
        (None, &admin),
        (Some(&to_b), &admin_b),
        (Some(&to_c), &admin_c),
    ];
    for place in [None, Some(&to_b), Some(&to_c), None] {
        let wanted = match place {
            None => spec("frank", json!({"authorization": view_here})),
            Some(to) => for_target(to, "frank", view_there.clone()),
        };
        apply(&admin, &ns, "frank", wanted).await;
        let target = place.map(|to| format!("{to}-admin"));
        moved(&admin, &ns, "frank", target.as_deref()).await;
        let frank = uid_of(&admin, &ns, "frank").await;
        for (at, client) in clusters {
            let (cluster, namespaced) = bindings(client, &frank).await;
            assert_eq!(
                cluster.len() + namespaced.len(),
                usize::from(at == place),
                "frank in {place:?}: its bindings in {}",
                at.map_or("A", |t| t.as_str())
            );
        }
    }

    // A target that binds roles its authority's policy does not list is refused.
    apply(
        &admin,
        &ns,
        "greedy",
        for_target(
            &to_b,
            "greedy",
            json!({"clusterRoleBindings": {"clusterRoles": ["cluster-admin"]}}),
        ),
    )
    .await;
    wait_condition(
        &admin,
        &ns,
        "greedy",
        "False",
        Some("PolicyViolation"),
        Duration::from_secs(10),
    )
    .await;

    // B stops: its Kubeconfigs say so, C's are served as ever; deletion waits for B.
    apply(
        &admin,
        &ns,
        "bob",
        for_target(
            &to_b,
            "bob",
            json!({"roleBindings": [{"namespace": "apps", "clusterRole": "view"}]}),
        ),
    )
    .await;
    wait_ready(&admin, &ns, "bob").await;
    let bob_uid = uid_of(&admin, &ns, "bob").await;
    // dave stays through the outage.
    apply(
        &admin,
        &ns,
        "dave",
        for_target(
            &to_b,
            "dave",
            json!({"roleBindings": [{"namespace": "apps", "clusterRole": "view"}]}),
        ),
    )
    .await;
    let dave_serial = wait_ready(&admin, &ns, "dave")
        .await
        .status
        .and_then(|s| s.serial_number);
    // grace moves from B to C while B is down: it waits for B.
    apply(
        &admin,
        &ns,
        "grace",
        for_target(&to_b, "grace", view_there.clone()),
    )
    .await;
    moved(&admin, &ns, "grace", Some(&format!("{to_b}-admin"))).await;
    let grace = uid_of(&admin, &ns, "grace").await;
    b.stop_component("kube-apiserver", true);
    let kc = wait_condition(
        &admin,
        &ns,
        "alice",
        "True",
        Some("TargetUnreachable"),
        Duration::from_secs(30),
    )
    .await;
    let message = &kc.status.unwrap().conditions[0].message;
    assert!(message.contains(&b.server), "{message}");
    wait_condition(
        &admin,
        &ns,
        "dave",
        "True",
        Some("TargetUnreachable"),
        Duration::from_secs(30),
    )
    .await;
    apply(
        &admin,
        &ns,
        "grace",
        for_target(&to_c, "grace", view_there.clone()),
    )
    .await;
    let waiting = wait_condition(
        &admin,
        &ns,
        "grace",
        "False",
        Some("TargetUnreachable"),
        Duration::from_secs(30),
    )
    .await;
    let status = waiting.status.unwrap();
    assert!(
        status.conditions[0].message.contains("goes first"),
        "{:?}",
        status.conditions[0]
    );
    assert_eq!(
        status.target.map(|t| t.name),
        Some(format!("{to_b}-admin")),
        "grace's bindings are still in B"
    );
    assert!(
        bindings(&admin_c, &grace).await.0.is_empty(),
        "nothing bound in C before B is cleaned"
    );
    apply(
        &admin,
        &ns,
        "carol",
        for_target(
            &to_c,
            "carol",
            json!({"roleBindings": [{"namespace": "default", "clusterRole": "view"}]}),
        ),
    )
    .await;
    wait_ready(&admin, &ns, "carol").await;
    // The authorities say it too, each of its own target.
    let down = reported(&admin, &to_b, false).await;
    assert!(
        down.message.as_deref().is_some_and(|m| !m.is_empty()),
        "{down:?}"
    );
    let up = reported(&admin, &to_c, true).await;
    assert!(up.last_contact.is_some(), "{up:?}");
    let carol_uid = uid_of(&admin, &ns, "carol").await;
    assert_eq!(
        bindings(&admin_c, &carol_uid).await.1.len(),
        1,
        "carol's binding is in C"
    );
    let carol = client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "carol-kubeconfig").await).await;
    Api::<Pod>::namespaced(carol, "default")
        .list(&ListParams::default())
        .await
        .expect("C serves carol while B is down");
    let kubeconfigs = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
    kubeconfigs
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    kubeconfigs
        .delete("bob", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting = kubeconfigs.get("alice").await.expect("alice waits for B");
    let message = &waiting.status.unwrap().conditions[0].message;
    assert!(message.contains("the deletion waits"), "{message}");

    // Giving B up is an admin's decision: a team member may not, the admin may.
    let member = crate::security::team_member(&admin, &ns, &format!("tm-{suffix}"), &["bob"]).await;
    let annotate =
        json!({"metadata": {"annotations": {"kubeconfig-authority.dev/orphan-target": "true"}}});
    // As that limited team member (requester and namespace binder in ns, impersonating bob):
    // for target C, what the guard and the authority's policy allow, and nothing more. The
    // guard checks bind rights in the controller's cluster, in the namespace of that name: the
    // member binds in C's namespace named like its own.
    create_namespace(&admin_c, &ns).await;
    let as_member = Api::<Kubeconfig>::namespaced(member.clone(), &ns);
    let ask = |name: &str, user: &str, role: &str| -> Kubeconfig {
        let mut spec = for_target(
            &to_c,
            user,
            json!({"roleBindings": [{"namespace": ns, "clusterRole": role}]}),
        );
        spec["groups"] = json!([]);
        spec["secretRef"] = json!({"name": name});
        serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap()
    };
    let created = eventually(
        Duration::from_secs(10),
        "the member may ask for bob's view in C",
        || {
            let (api, kc) = (as_member.clone(), ask("bob-on-c", "bob", "view"));
            async move {
                api.create(&PostParams::default(), &kc)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    for (name, user, role, why) in [
        (
            "bob-admin-c",
            "bob",
            "admin",
            "a role the member may not bind",
        ),
        (
            "mallory-c",
            "mallory",
            "view",
            "a user the member may not impersonate",
        ),
    ] {
        let refused = as_member
            .create(&PostParams::default(), &ask(name, user, role))
            .await;
        assert_eq!(code(refused), 403, "{why}");
    }
    wait_ready(&admin, &ns, "bob-on-c").await;
    assert_eq!(
        bindings(&admin_c, &created.uid().unwrap()).await.1.len(),
        1,
        "bob's view is bound in C"
    );
    let refused = Api::<Kubeconfig>::namespaced(member, &ns)
        .patch("bob", &PatchParams::default(), &Patch::Merge(&annotate))
        .await;
    assert_eq!(code(refused), 403, "a team member may not orphan");
    kubeconfigs
        .patch("bob", &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .expect("the admin may orphan");
    gone(&admin, &ns, "bob", Duration::from_secs(20)).await;
    assert!(
        kubeconfigs.get_opt("alice").await.unwrap().is_some(),
        "alice still waits"
    );

    // B returns: alice's deletion completes, everything gone from B first; bob's binding
    // stays there, as the annotation said.
    b.start_component("kube-apiserver");
    gone(&admin, &ns, "alice", Duration::from_secs(60)).await;
    let (cluster, namespaced) = bindings(&admin_b, &uid).await;
    assert!(
        cluster.is_empty() && namespaced.is_empty(),
        "alice's bindings gone from B"
    );
    let (_, orphaned) = bindings(&admin_b, &bob_uid).await;
    assert_eq!(orphaned.len(), 1, "bob's binding was given up");
    wait_ready(&admin, &ns, "carol").await;
    // dave recovers without a restart: Ready for the same certificate, its binding checked in
    // B again.
    let recovered = wait_condition(
        &admin,
        &ns,
        "dave",
        "True",
        Some("Issued"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        recovered
            .status
            .as_ref()
            .and_then(|s| s.serial_number.clone()),
        dave_serial,
        "the same certificate"
    );
    reported(&admin, &to_b, true).await;
    moved(&admin, &ns, "grace", Some(&format!("{to_c}-admin"))).await;
    assert!(
        bindings(&admin_b, &grace).await.0.is_empty(),
        "grace's binding in B went once B was back"
    );
    assert_eq!(bindings(&admin_c, &grace).await.0.len(), 1, "and is in C");
    let dave_uid = recovered.uid().unwrap();
    assert_eq!(bindings(&admin_b, &dave_uid).await.1.len(), 1);

    // A certificate through B's CSR API (signed by B's kube-controller-manager), which works on
    // B; the request is made, approved and removed in B.
    let csrs = format!("csr-{suffix}");
    target_authority(
        &admin,
        &system,
        &csrs,
        &b,
        json!({"certificateSigningRequest": {}}),
    )
    .await;
    apply(
        &admin,
        &ns,
        "erin",
        for_target(
            &csrs,
            "erin",
            json!({"roleBindings": [{"namespace": "apps", "clusterRole": "view"}]}),
        ),
    )
    .await;
    // B's kube-controller-manager signs it once its watches are back after B's API server
    // restarted above: client-go's reflector backoff can hold them for up to a minute.
    let erin = wait_condition(&admin, &ns, "erin", "True", None, Duration::from_secs(90)).await;
    let erin_yaml = kubeconfig_of(&admin, &ns, "erin-kubeconfig").await;
    let erin_client = client_from_kubeconfig(&erin_yaml).await;
    Api::<Pod>::namespaced(erin_client, "apps")
        .list(&ListParams::default())
        .await
        .expect("erin's certificate from B's CSR API views apps on B");
    let left =
        Api::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>::all(admin_b.clone())
            .list(&ListParams::default().labels(&format!(
                "kubeconfig-authority.dev/kubeconfig-uid={}",
                erin.uid().unwrap()
            )))
            .await
            .unwrap()
            .items;
    assert!(
        left.is_empty(),
        "the CSR in B is removed once its certificate is taken"
    );

    // A ServiceAccount token from B, revoked in B when its Kubeconfig goes.
    let tokens = format!("t-{suffix}");
    target_authority(
        &admin,
        &system,
        &tokens,
        &b,
        json!({"serviceAccountToken": {}}),
    )
    .await;
    create_namespace(&admin_b, &ns).await;
    let robot: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin_b.clone(), &ns)
        .create(&PostParams::default(), &robot)
        .await
        .unwrap();
    apply(
        &admin,
        &ns,
        "robot",
        json!({"authorityRef": {"kind": "ClusterAuthority", "name": tokens},
            "serviceAccountRef": {"name": "robot"}, "validity": "1h",
            "secretRef": {"name": "robot-kubeconfig"}}),
    )
    .await;
    let robot_status = wait_ready(&admin, &ns, "robot").await.status.unwrap();
    let robot = client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "robot-kubeconfig").await).await;
    let review = Api::<SelfSubjectReview>::all(robot.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("B knows the robot's token");
    let user = review.status.and_then(|s| s.user_info).unwrap();
    assert_eq!(
        user.username,
        Some(format!("system:serviceaccount:{ns}:robot"))
    );
    // B's audit log names the token by its JTI, as the status does.
    let id = user
        .extra
        .unwrap_or_default()
        .remove("authentication.kubernetes.io/credential-id")
        .unwrap_or_default();
    assert_eq!(
        id,
        robot_status
            .credential_id
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert!(id[0].starts_with("JTI="), "{id:?}");
    // Rotated on request: a new token from B, which works.
    kubeconfigs
        .patch(
            "robot",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"kubeconfig-authority.dev/renew-requested-at": "now"}}})),
        )
        .await
        .unwrap();
    let first = robot_status.token_id.clone();
    eventually(Duration::from_secs(15), "the robot's token rotated", || {
        let (kubeconfigs, first) = (kubeconfigs.clone(), first.clone());
        async move {
            let s = kubeconfigs
                .get("robot")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if s.token_id.is_some() && s.token_id != first {
                Ok(())
            } else {
                Err(format!("{:?}", s.token_id))
            }
        }
    })
    .await;
    let rotated =
        client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "robot-kubeconfig").await).await;
    Api::<SelfSubjectReview>::all(rotated)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("B knows the rotated token");
    kubeconfigs
        .delete("robot", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the robot's token revoked in B",
        || {
            let robot = robot.clone();
            async move {
                let answer = Api::<SelfSubjectReview>::all(robot)
                    .create(&PostParams::default(), &SelfSubjectReview::default())
                    .await;
                if code(answer) == 401 {
                    Ok(())
                } else {
                    Err("still accepted".to_string())
                }
            }
        },
    )
    .await;
}

/// A PEM as it appears (base64) in a kubeconfig.
fn base64_pem(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// Completed requests the API server counted (its `apiserver_request_total`, all series).
async fn requests_served(client: &Client) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("the API server's metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// What a target costs the controller: its own controller on its own cluster, three targets
/// (no kube-controller-manager there, so that the controller is the targets' only client),
/// one Kubeconfig with one binding in each. Memory (RSS before and after), watches (three
/// per target, by design), and requests per minute to each target once idle, against each
/// target's own requests in a minute before the controller knew it.
#[tokio::test]
async fn what_a_target_cluster_costs_the_controller() {
    let home = ControlPlane::start_apart();
    home.install_crds().await;
    home.install_controller_rbac().await;
    let port = crate::support::free_port().unwrap();
    let health = format!("--health-addr=127.0.0.1:{port}");
    let controller = home.spawn_controller(
        std::path::Path::new(crate::BIN),
        &["--leader-elect=false", &health],
        &[],
        "controller",
    );
    let pid = controller.child.id();
    home.adopt(controller);
    let admin = home.admin().await;
    let targets: Vec<ControlPlane> = (0..3).map(|_| ControlPlane::start_apart()).collect();
    let mut clients = Vec::new();
    for t in &targets {
        clients.push(t.admin().await);
    }
    eventually(
        Duration::from_secs(30),
        "the controller ready",
        || async move {
            match crate::support::http_get(port, "/readyz").await {
                Some((status, _)) if status.contains("200") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // A minute of each target on its own, and the controller idle with no target.
    let window = Duration::from_secs(60);
    let mut before = Vec::new();
    for c in &clients {
        before.push(requests_served(c).await);
    }
    tokio::time::sleep(window).await;
    let mut alone = Vec::new();
    for (c, b) in clients.iter().zip(&before) {
        alone.push(requests_served(c).await - b);
    }
    let rss_without = rss_mib(pid);

    let system = home.namespace("system").await;
    let ns = home.namespace("team").await;
    for (i, t) in targets.iter().enumerate() {
        let name = format!("t{i}");
        target_authority(&admin, &system, &name, t, Value::Null).await;
        apply(
            &admin,
            &ns,
            &name,
            spec(
                &format!("user-{i}"),
                json!({"authorityRef": {"kind": "ClusterAuthority", "name": name},
                    "authorization": {"clusterRoleBindings": {"clusterRoles": ["view"]}}}),
            ),
        )
        .await;
        wait_ready(&admin, &ns, &name).await;
    }
    // Settled, then a minute of each target with the controller watching it, idle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut before = Vec::new();
    for c in &clients {
        before.push(requests_served(c).await);
    }
    tokio::time::sleep(window).await;
    let mut watched = Vec::new();
    for (c, b) in clients.iter().zip(&before) {
        watched.push(requests_served(c).await - b);
    }
    let rss_with = rss_mib(pid);
    let per_target_mib = (rss_with - rss_without) / targets.len() as f64;
    let per_target_requests: Vec<f64> = watched.iter().zip(&alone).map(|(w, a)| w - a).collect();
    let (_, metrics) = crate::support::http_get(port, "/metrics").await.unwrap();
    let watched_targets = metrics
        .lines()
        .find(|l| l.starts_with("kubeconfig_authority_targets "))
        .unwrap_or("kubeconfig_authority_targets ?")
        .to_string();
    println!(
        "per target: {per_target_mib:.2} MiB of controller memory ({rss_without:.1} -> {rss_with:.1} MiB with 3), \
         3 watches, idle requests per minute {per_target_requests:?} (the targets' own: {alone:?}); {watched_targets}"
    );
    // Each target is reported, reachable, heard from within the last minute.
    for i in 0..targets.len() {
        let label = format!("{{target=\"{system}/t{i}-admin\"}}");
        let value = |metric: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("{metric}{label}")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {metric}{label} in the metrics"))
        };
        assert_eq!(value("kubeconfig_authority_target_reachable"), 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let last = value("kubeconfig_authority_target_last_contact_timestamp_seconds");
        assert!(now - last < 60.0, "last contact {:.0} s ago", now - last);
    }
    assert!(per_target_mib < 16.0, "{per_target_mib:.2} MiB per target");
    assert!(
        per_target_requests.iter().all(|r| *r < 6.0),
        "idle requests per minute: {per_target_requests:?}"
    );
}

/// A control plane of its own with a controller of two reconcile slots: the plane, its admin
/// client, a namespace for target Secrets, and a team namespace with the Authority
/// `cluster-ca` of the plane itself.
async fn two_slots() -> (ControlPlane, Client, String, String) {
    let home = ControlPlane::start_apart();
    home.install_crds().await;
    home.install_controller_rbac().await;
    let controller = home.spawn_controller(
        std::path::Path::new(crate::BIN),
        &["--leader-elect=false", "--concurrency=2"],
        &[],
        "controller",
    );
    home.adopt(controller);
    let admin = home.admin().await;
    let system = home.namespace("system").await;
    let (_, ns) = crate::setup_on(&home, "team", &home.ca).await;
    (home, admin, system, ns)
}

/// A target down from the moment its watches start holds up no other Kubeconfig: its own
/// controller with two reconcile slots, eight Kubeconfigs of a target that refuses every
/// connection (each looked at again every 5 s), and one of the controller's own cluster, which
/// is Ready as fast as ever. (A reconcile that waited 5 s for the target's first list each time
/// kept both slots busy.)
#[tokio::test]
async fn a_target_down_from_the_start_holds_up_no_one_else() {
    let (home, admin, system, ns) = two_slots().await;
    let dead = home
        .admin_kubeconfig()
        .replace(&home.server, "https://127.0.0.1:1");
    target_authority_with(&admin, &system, "dead", &dead, &home.ca, Value::Null).await;
    for i in 0..8 {
        let name = format!("dead-{i}");
        let authority = json!({"authorityRef": {"kind": "ClusterAuthority", "name": "dead"}});
        apply(&admin, &ns, &name, spec(&name, authority)).await;
    }
    for i in 0..8 {
        wait_condition(
            &admin,
            &ns,
            &format!("dead-{i}"),
            "False",
            Some("TargetUnreachable"),
            Duration::from_secs(30),
        )
        .await;
    }
    // Two rounds of retries of the dead ones, then one of the controller's own cluster, three
    // times.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for i in 0..3 {
        crate::ready_beside(
            &admin,
            &ns,
            &format!("alive-{i}"),
            "the Kubeconfigs of a dead target",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// A target that stops answering without closing its connections holds up no other
/// Kubeconfig, and its own converge when it answers again. Its API server is stopped with
/// SIGSTOP: the kernel still accepts connections and keeps the open ones, nothing answers, and
/// the controller's requests there wait until the HTTP/2 pings give the connection up (10-20
/// s). Its own controller with two reconcile slots; six Kubeconfigs of that target must each
/// change a binding there when it falls silent. A target may use only half the slots, so
/// Kubeconfigs of the controller's own cluster are Ready as fast as ever meanwhile (with both
/// slots waiting on the silent target, they waited up to 20 s).
#[tokio::test]
async fn a_target_that_stops_answering_holds_up_no_one_else() {
    let (_home, admin, system, ns) = two_slots().await;
    let silent = ControlPlane::start_apart();
    let admin_silent = silent.admin().await;
    target_authority(&admin, &system, "silent", &silent, Value::Null).await;
    let bound = |name: &str, role: &str| {
        spec(
            name,
            json!({"authorityRef": {"kind": "ClusterAuthority", "name": "silent"},
                "authorization": {"clusterRoleBindings": {"clusterRoles": [role]}}}),
        )
    };
    let names: Vec<String> = (0..6).map(|i| format!("silent-{i}")).collect();
    for name in &names {
        apply(&admin, &ns, name, bound(name, "view")).await;
    }
    for name in &names {
        wait_ready(&admin, &ns, name).await;
    }
    silent.freeze_component("kube-apiserver", true);
    for name in &names {
        apply(&admin, &ns, name, bound(name, "edit")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        crate::ready_beside(
            &admin,
            &ns,
            &format!("alive-{i}"),
            "the Kubeconfigs of a silent target",
        )
        .await;
    }
    silent.freeze_component("kube-apiserver", false);
    for name in &names {
        let uid = uid_of(&admin, &ns, name).await;
        eventually(
            Duration::from_secs(90),
            "the new binding in the target",
            || {
                let (admin_silent, uid) = (admin_silent.clone(), uid.clone());
                async move {
                    let (cluster, _) = bindings(&admin_silent, &uid).await;
                    let roles: Vec<String> = cluster.into_iter().map(|b| b.role_ref.name).collect();
                    if roles == ["edit"] {
                        Ok(())
                    } else {
                        Err(format!("bound there: {roles:?}"))
                    }
                }
            },
        )
        .await;
        wait_ready(&admin, &ns, name).await;
    }
}
