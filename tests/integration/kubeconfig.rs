//! The Kubeconfig controller against the real control plane: issuance, RBAC, identity
//! uniqueness, renewal in real time, repair, CA rotation, and bad CAs.

use std::time::{Duration, Instant};

use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{ConfigMap, Secret},
        rbac::v1::{ClusterRoleBinding, RoleBinding},
    },
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::Kubeconfig;
use kubeconfig_authority_pki::kubeconfig as kc_file;
use serde_json::json;

use crate::{
    BIN, apply, code,
    control_plane::whoami,
    create_configmap, delete_and_wait, eventually, kubeconfig_of, list_configmaps, plane,
    put_ca_secret, ready_condition, secret, serial_of, setup, spec,
    support::{TestCa, client_from_kubeconfig},
    until_code, wait_condition, wait_ready,
};

#[tokio::test]
async fn a_kubeconfig_is_ready_within_two_seconds_and_authenticates() {
    let plane = plane();
    let (admin, ns) = setup("issue", &plane.ca).await;
    let started = Instant::now();
    apply(
        &admin,
        &ns,
        "susan",
        spec("susan", json!({"groups": ["developers", "ops"]})),
    )
    .await;
    let kc = wait_condition(
        &admin,
        &ns,
        "susan",
        "True",
        Some("Issued"),
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "Ready after {took:?}");
    let uid = kc.uid().unwrap();

    let secret = secret(&admin, &ns, "susan-kubeconfig").await.unwrap();
    let data = secret.data.clone().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["ca.crt", "kubeconfig", "tls.crt", "tls.key", "value"]
    );
    assert_eq!(data["kubeconfig"], data["value"]);
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Kubeconfig", uid.as_str(), Some(true))
    );

    let status = kc.status.clone().unwrap();
    let kubeconfig = String::from_utf8(data["kubeconfig"].0.clone()).unwrap();
    assert_eq!(
        status.serial_number.as_deref(),
        Some(serial_of(&kubeconfig).0.as_str())
    );
    assert!(status.renewal_time.is_some() && status.not_after.is_some());
    assert_eq!(status.secret_name.as_deref(), Some("susan-kubeconfig"));

    let (user, groups) = whoami(client_from_kubeconfig(&kubeconfig).await).await;
    assert_eq!(user, "susan");
    assert_eq!(
        groups,
        [
            "developers",
            "ops",
            "kubeconfig:susan",
            &format!("kubeconfig-uid:{uid}"),
            "system:authenticated"
        ]
    );

    // An event says what was done, without key material.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns);
    let issued = eventually(Duration::from_secs(5), "an Issued event", || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Issued")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("susan")
            })
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert_eq!(
        (
            issued.type_.as_deref(),
            issued.action.as_deref(),
            issued.reporting_controller.as_deref(),
            issued.regarding.as_ref().and_then(|r| r.uid.as_deref()),
        ),
        (
            Some("Normal"),
            Some("Issue"),
            Some("kubeconfig-authority"),
            Some(uid.as_str())
        )
    );
    assert!(issued.event_time.is_some() && issued.reporting_instance.is_some());
    let note = issued.note.unwrap_or_default();
    assert!(
        note.contains(status.serial_number.as_deref().unwrap()) && !note.contains("PRIVATE KEY"),
        "{note}"
    );

    // `kubeconfig-authority get` downloads the same kubeconfig.
    let out = std::process::Command::new(BIN)
        .args(["get", "susan", "-n", &ns])
        .env("KUBECONFIG", plane.admin_kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), kubeconfig);
}

#[tokio::test]
async fn bindings_grant_exactly_the_roles_asked_for_and_go_with_the_object() {
    let plane = plane();
    let (admin, ns) = setup("rbac", &plane.ca).await;
    let other = plane.namespace("rbac-other").await;
    let authorization = json!({"authorization": {
        "clusterRoleBindings": {"clusterRoles": ["view"]},
        "roleBindings": [{"namespace": ns, "clusterRole": "edit"}],
    }});
    apply(&admin, &ns, "bob", spec("bob", authorization.clone())).await;
    let kc = wait_ready(&admin, &ns, "bob").await;
    let uid = kc.uid().unwrap();
    let bob = client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "bob-kubeconfig").await).await;
    let configmap = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };

    // view cluster-wide: read anywhere; edit in its namespace: write there only.
    until_code("bob lists configmaps elsewhere", 200, || {
        list_configmaps(bob.clone(), other.clone())
    })
    .await;
    until_code("bob creates a configmap in his namespace", 200, || {
        create_configmap(bob.clone(), ns.clone(), "a")
    })
    .await;
    assert_eq!(
        code(
            Api::<ConfigMap>::namespaced(bob.clone(), &other)
                .create(&PostParams::default(), &configmap("b"))
                .await
        ),
        403
    );
    assert_eq!(
        code(
            Api::<Secret>::namespaced(bob.clone(), &other)
                .list(&ListParams::default())
                .await
        ),
        403,
        "view does not read secrets"
    );

    // The bindings: deterministic names, labelled with the UID, bound to the UID group.
    let crb = Api::<ClusterRoleBinding>::all(admin.clone())
        .get(&format!("kubeconfig:{ns}:bob:view"))
        .await
        .unwrap();
    assert_eq!(crb.labels()["kubeconfig-authority.dev/kubeconfig-uid"], uid);
    assert_eq!(
        crb.subjects.unwrap()[0].name,
        format!("kubeconfig-uid:{uid}")
    );

    // Removing edit from the spec takes the write away; view stays.
    apply(
        &admin,
        &ns,
        "bob",
        spec(
            "bob",
            json!({"authorization": {"clusterRoleBindings": {"clusterRoles": ["view"]}}}),
        ),
    )
    .await;
    until_code("bob loses edit", 403, || {
        create_configmap(bob.clone(), ns.clone(), "c")
    })
    .await;
    assert_eq!(
        code(
            Api::<ConfigMap>::namespaced(bob.clone(), &ns)
                .list(&ListParams::default())
                .await
        ),
        200
    );
    assert!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .get_opt(&format!("kubeconfig:{ns}:bob:clusterrole:edit"))
            .await
            .unwrap()
            .is_none()
    );

    // Deleting the Kubeconfig removes the bindings and the Secret before it goes.
    delete_and_wait(&admin, &ns, "bob").await;
    assert!(secret(&admin, &ns, "bob-kubeconfig").await.is_none());
    let left = Api::<ClusterRoleBinding>::all(admin.clone())
        .list(
            &ListParams::default()
                .labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}")),
        )
        .await
        .unwrap();
    assert!(left.items.is_empty());
    until_code("the old certificate loses view", 403, || {
        list_configmaps(bob.clone(), other.clone())
    })
    .await;
}

#[tokio::test]
async fn old_certificates_never_inherit_bindings_of_a_namesake() {
    let plane = plane();
    let (admin, ns) = setup("namesake", &plane.ca).await;
    let (_, ns2) = setup("namesake2", &plane.ca).await;
    let target = plane.namespace("namesake-target").await;
    let view_target =
        json!({"authorization": {"roleBindings": [{"namespace": target, "clusterRole": "view"}]}});

    // ns/carol, then deleted and recreated with the same name and the same bindings.
    apply(&admin, &ns, "carol", spec("carol", view_target.clone())).await;
    wait_ready(&admin, &ns, "carol").await;
    let first = client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "carol-kubeconfig").await).await;
    until_code("the first carol reads the target", 200, || {
        list_configmaps(first.clone(), target.clone())
    })
    .await;
    delete_and_wait(&admin, &ns, "carol").await;
    apply(&admin, &ns, "carol", spec("carol", view_target.clone())).await;
    wait_ready(&admin, &ns, "carol").await;
    let second =
        client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "carol-kubeconfig").await).await;
    until_code("the second carol reads the target", 200, || {
        list_configmaps(second.clone(), target.clone())
    })
    .await;
    assert_eq!(
        code(
            Api::<ConfigMap>::namespaced(first.clone(), &target)
                .list(&ListParams::default())
                .await
        ),
        403,
        "the first carol's certificate gets nothing from the second"
    );

    // ns2/dave has the binding; ns/dave, same name and username, has none.
    apply(&admin, &ns2, "dave", spec("dave", view_target)).await;
    apply(&admin, &ns, "dave", spec("dave", json!({}))).await;
    wait_ready(&admin, &ns2, "dave").await;
    wait_ready(&admin, &ns, "dave").await;
    let bound = client_from_kubeconfig(&kubeconfig_of(&admin, &ns2, "dave-kubeconfig").await).await;
    let unbound =
        client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "dave-kubeconfig").await).await;
    until_code("ns2/dave reads the target", 200, || {
        list_configmaps(bound.clone(), target.clone())
    })
    .await;
    assert_eq!(
        code(
            Api::<ConfigMap>::namespaced(unbound.clone(), &target)
                .list(&ListParams::default())
                .await
        ),
        403
    );
}

#[tokio::test]
async fn short_certificates_are_renewed_before_they_expire() {
    let plane = plane();
    let (admin, ns) = setup("renew", &plane.ca).await;
    apply(
        &admin,
        &ns,
        "erin",
        spec("erin", json!({"validity": "2m", "renewBefore": "1m"})),
    )
    .await;
    let first_kc = wait_ready(&admin, &ns, "erin").await;
    let first = kubeconfig_of(&admin, &ns, "erin-kubeconfig").await;
    let (first_serial, _) = serial_of(&first);
    let first_not_after = first_kc.status.unwrap().not_after.unwrap();
    // Due at notAfter - 1m (less up to 6s of jitter, but never sooner than a minute after
    // issuance): about a minute from now. Nothing touches the object meanwhile.
    let renewed = eventually(Duration::from_secs(80), "renewal", || async {
        let now = kubeconfig_of(&admin, &ns, "erin-kubeconfig").await;
        if serial_of(&now).0 != first_serial {
            Ok(now)
        } else {
            Err("same serial".to_string())
        }
    })
    .await;
    let new_serial = serial_of(&renewed).0;
    let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
    let status = eventually(
        Duration::from_secs(5),
        "the status shows the new certificate",
        || async {
            let status = api
                .get("erin")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if status.serial_number.as_deref() == Some(new_serial.as_str()) {
                Ok(status)
            } else {
                Err(format!("{:?}", status.serial_number))
            }
        },
    )
    .await;
    assert!(status.not_after.clone().unwrap().0 > first_not_after.0);
    assert!(
        k8s_openapi::jiff::Timestamp::now() < first_not_after.0,
        "renewed before the old one expired"
    );
    assert_eq!(
        ready_condition(
            &Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
                .get("erin")
                .await
                .unwrap()
        )
        .unwrap()
        .1,
        "Renewed"
    );
    // Both the old and the new kubeconfig work (the old one until it expires).
    assert_eq!(whoami(client_from_kubeconfig(&first).await).await.0, "erin");
    assert_eq!(
        whoami(client_from_kubeconfig(&renewed).await).await.0,
        "erin"
    );
}

#[tokio::test]
async fn damage_is_repaired_within_seconds() {
    let plane = plane();
    let (admin, ns) = setup("repair", &plane.ca).await;
    apply(
        &admin,
        &ns,
        "frank",
        spec(
            "frank",
            json!({"authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]}}),
        ),
    )
    .await;
    wait_ready(&admin, &ns, "frank").await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let valid_secret = || async {
        let s = secrets
            .get_opt("frank-kubeconfig")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Secret")?;
        let yaml = String::from_utf8(s.data.ok_or("no data")?["kubeconfig"].0.clone())
            .map_err(|e| e.to_string())?;
        kc_file::parse(&yaml).map_err(|e| e.to_string())?;
        Ok::<_, String>(yaml)
    };

    // The Secret deleted.
    secrets
        .delete("frank-kubeconfig", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    let restored = eventually(
        Duration::from_secs(5),
        "the deleted Secret restored",
        valid_secret,
    )
    .await;
    eprintln!("deleted Secret restored in {:?}", started.elapsed());
    assert_eq!(
        whoami(client_from_kubeconfig(&restored).await).await.0,
        "frank"
    );

    // Its data edited.
    let edit = json!({"data": {"kubeconfig": ByteString(b"garbage".to_vec())}});
    secrets
        .patch(
            "frank-kubeconfig",
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let repaired = eventually(
        Duration::from_secs(5),
        "the edited Secret repaired",
        valid_secret,
    )
    .await;
    eprintln!("edited Secret repaired in {:?}", started.elapsed());
    assert_eq!(
        whoami(client_from_kubeconfig(&repaired).await).await.0,
        "frank"
    );
    // A label and an annotation someone added are kept through repairs.
    secrets.patch("frank-kubeconfig", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"team": "a"}, "annotations": {"note": "mine"}}, "data": {"tls.crt": ByteString(b"x".to_vec())}}))).await.unwrap();
    eventually(Duration::from_secs(5), "repaired again", || async {
        let s = secrets
            .get("frank-kubeconfig")
            .await
            .map_err(|e| e.to_string())?;
        let ok = s
            .data
            .as_ref()
            .is_some_and(|d| d["tls.crt"].0.starts_with(b"-----BEGIN CERTIFICATE"));
        if ok {
            Ok(s)
        } else {
            Err("tls.crt still edited".into())
        }
    })
    .await;
    let repaired = secrets.get("frank-kubeconfig").await.unwrap();
    assert_eq!(repaired.labels().get("team").map(String::as_str), Some("a"));
    assert_eq!(
        repaired.annotations().get("note").map(String::as_str),
        Some("mine")
    );

    // A binding deleted.
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), &ns);
    let name = format!("kubeconfig:{ns}:frank:clusterrole:view");
    bindings
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    eventually(Duration::from_secs(5), "the binding restored", || async {
        bindings
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_string())
    })
    .await;
    eprintln!("deleted binding restored in {:?}", started.elapsed());
    // A binding edited (its subjects emptied).
    bindings
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"subjects": []})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the binding's subjects restored",
        || async {
            let b = bindings.get(&name).await.map_err(|e| e.to_string())?;
            if b.subjects.unwrap_or_default().len() == 1 {
                Ok(())
            } else {
                Err("no subjects".to_string())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_new_ca_reissues_every_dependent() {
    let plane = plane();
    let (admin, ns) = setup("rotate", &plane.ca).await;
    for name in ["gina", "hank"] {
        apply(&admin, &ns, name, spec(name, json!({}))).await;
    }
    let mut before = Vec::new();
    for name in ["gina", "hank"] {
        wait_ready(&admin, &ns, name).await;
        before.push(serial_of(
            &kubeconfig_of(&admin, &ns, &format!("{name}-kubeconfig")).await,
        ));
    }
    assert!(
        before
            .iter()
            .all(|(_, issuer)| issuer.contains("kubeconfig-authority-test-ca"))
    );

    // The CA Secret now holds the spare CA, which the API server also trusts.
    put_ca_secret(
        &admin,
        &ns,
        "cluster-ca",
        &plane.spare_ca.cert_pem,
        &plane.spare_ca.key_pem,
    )
    .await;
    for (name, (old_serial, _)) in ["gina", "hank"].into_iter().zip(before) {
        let yaml = eventually(
            Duration::from_secs(10),
            &format!("{name} reissued by the new CA"),
            || async {
                let yaml = kubeconfig_of(&admin, &ns, &format!("{name}-kubeconfig")).await;
                let (serial, issuer) = serial_of(&yaml);
                if serial != old_serial && issuer.contains("spare-ca") {
                    Ok(yaml)
                } else {
                    Err(issuer)
                }
            },
        )
        .await;
        let kc = wait_condition(
            &admin,
            &ns,
            name,
            "True",
            Some("Reissued"),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(kc.status.unwrap().serial_number, Some(serial_of(&yaml).0));
        assert_eq!(whoami(client_from_kubeconfig(&yaml).await).await.0, name);
        let secret = secret(&admin, &ns, &format!("{name}-kubeconfig"))
            .await
            .unwrap();
        assert_eq!(
            secret.data.unwrap()["ca.crt"].0,
            plane.spare_ca.cert_pem.as_bytes()
        );
    }
}

#[tokio::test]
async fn bad_cas_are_reported_and_nothing_is_written_until_fixed() {
    let plane = plane();
    let (admin, ns) = setup("badca", &plane.ca).await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    secrets
        .delete("cluster-ca", &DeleteParams::default())
        .await
        .unwrap();
    apply(&admin, &ns, "ivan", spec("ivan", json!({}))).await;
    let kc = wait_condition(
        &admin,
        &ns,
        "ivan",
        "False",
        Some("CASecretNotFound"),
        Duration::from_secs(10),
    )
    .await;
    let message = ready_condition(&kc).unwrap().2;
    assert!(
        message.contains(&format!("{ns}/cluster-ca")) && message.contains("does not exist"),
        "{message}"
    );

    // Meanwhile other Kubeconfigs are served.
    let (other_admin, other_ns) = setup("badca-other", &plane.ca).await;
    apply(&other_admin, &other_ns, "judy", spec("judy", json!({}))).await;
    wait_ready(&other_admin, &other_ns, "judy").await;

    let leaf = TestCa::leaf_pair();
    let expired = TestCa::expired("expired-ca");
    let cases = [
        (
            "CASecretInvalid",
            "garbage".to_string(),
            plane.ca.key_pem.clone(),
            "no PEM block",
        ),
        (
            "CASecretInvalid",
            plane.spare_ca.cert_pem.clone(),
            plane.ca.key_pem.clone(),
            "does not match",
        ),
        ("CANotACA", leaf.0, leaf.1, "not a CA"),
        (
            "CAExpired",
            expired.cert_pem.clone(),
            expired.key_pem.clone(),
            "expired",
        ),
    ];
    let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
    for (reason, cert, key, needle) in cases {
        put_ca_secret(&admin, &ns, "cluster-ca", &cert, &key).await;
        let message = eventually(
            Duration::from_secs(10),
            &format!("{reason} reported"),
            || async {
                let kc = api.get("ivan").await.map_err(|e| e.to_string())?;
                match ready_condition(&kc) {
                    Some((s, r, m)) if s == "False" && r == reason && m.contains(needle) => Ok(m),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        assert!(
            !message.contains("PRIVATE KEY")
                && !message.contains(key.lines().nth(1).unwrap_or("-")),
            "no key material: {message}"
        );
        assert!(
            secret(&admin, &ns, "ivan-kubeconfig").await.is_none(),
            "nothing written with {reason}"
        );
    }

    // Fixed: recovers on its own, at once.
    put_ca_secret(
        &admin,
        &ns,
        "cluster-ca",
        &plane.ca.cert_pem,
        &plane.ca.key_pem,
    )
    .await;
    wait_ready(&admin, &ns, "ivan").await;
    assert_eq!(
        whoami(client_from_kubeconfig(&kubeconfig_of(&admin, &ns, "ivan-kubeconfig").await).await)
            .await
            .0,
        "ivan"
    );
}

#[tokio::test]
async fn a_secret_the_controller_did_not_create_is_never_overwritten() {
    let plane = plane();
    let (admin, ns) = setup("conflict", &plane.ca).await;
    let theirs = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kim-kubeconfig"}, "stringData": {"kubeconfig": "mine"}});
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch(
            "kim-kubeconfig",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    apply(&admin, &ns, "kim", spec("kim", json!({}))).await;
    let kc = wait_condition(
        &admin,
        &ns,
        "kim",
        "False",
        Some("SecretConflict"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        ready_condition(&kc)
            .unwrap()
            .2
            .contains("not managed by this Kubeconfig")
    );
    let data = secret(&admin, &ns, "kim-kubeconfig")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["kubeconfig"].0, b"mine");
    // Deleting the Kubeconfig leaves their Secret alone too.
    delete_and_wait(&admin, &ns, "kim").await;
    assert!(secret(&admin, &ns, "kim-kubeconfig").await.is_some());
}

#[tokio::test]
async fn kubeconfigs_without_an_authority_use_the_default_cluster_authority() {
    use kubeconfig_authority::api::ClusterAuthority;
    let plane = plane();
    let admin = plane.admin().await;
    let ca_ns = plane.namespace("default-ca").await;
    put_ca_secret(
        &admin,
        &ca_ns,
        "cluster-ca",
        &plane.ca.cert_pem,
        &plane.ca.key_pem,
    )
    .await;
    let ns = plane.namespace("default-user").await;
    let mut spec = spec("lena", json!({}));
    spec.as_object_mut().unwrap().remove("authorityRef");
    apply(&admin, &ns, "lena", spec).await;
    // The controller runs with --default-authority ClusterAuthority/default-ca, which does not
    // exist yet.
    let kc = wait_condition(
        &admin,
        &ns,
        "lena",
        "False",
        Some("AuthorityNotFound"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        ready_condition(&kc)
            .unwrap()
            .2
            .contains("ClusterAuthority default-ca does not exist")
    );

    let cluster_authorities = Api::<ClusterAuthority>::all(admin.clone());
    let without_namespace: ClusterAuthority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "ClusterAuthority",
        "metadata": {"name": "default-ca"},
        "spec": {"server": plane.server, "signer": {"caSecretRef": {"name": "cluster-ca"}}},
    }))
    .unwrap();
    cluster_authorities
        .create(&PostParams::default(), &without_namespace)
        .await
        .unwrap();
    let kc = wait_condition(
        &admin,
        &ns,
        "lena",
        "False",
        Some("InvalidAuthority"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        ready_condition(&kc)
            .unwrap()
            .2
            .contains("namespace is required")
    );

    let fixed =
        json!({"spec": {"signer": {"caSecretRef": {"name": "cluster-ca", "namespace": ca_ns}}}});
    cluster_authorities
        .patch("default-ca", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    wait_ready(&admin, &ns, "lena").await;
    let yaml = kubeconfig_of(&admin, &ns, "lena-kubeconfig").await;
    assert_eq!(whoami(client_from_kubeconfig(&yaml).await).await.0, "lena");
    // The kubeconfig's server CA defaulted to the signer's CA certificate.
    assert_eq!(
        kc_file::parse(&yaml)
            .unwrap()
            .certificate_authority_pem
            .as_deref(),
        Some(plane.ca.cert_pem.as_str())
    );
}

/// Every key algorithm's kubeconfig works for OpenSSL clients too (the OpenSSL 3.0 of current
/// Debian and Ubuntu, Python's `ssl`), not only for Go's: each one's certificate and key make a
/// SelfSubjectReview with `openssl s_client` and with Python.
#[tokio::test]
async fn every_key_algorithm_works_with_openssl_and_python() {
    let plane = plane();
    let (admin, ns) = setup("clients", &plane.ca).await;
    let algorithms = [
        ("ecdsa", "ECDSA", 256),
        ("p384", "ECDSA", 384),
        ("rsa", "RSA", 2048),
        ("ed", "Ed25519", 0),
    ];
    for (name, algorithm, size) in algorithms {
        let key = if size == 0 {
            json!({"algorithm": algorithm})
        } else {
            json!({"algorithm": algorithm, "size": size})
        };
        apply(&admin, &ns, name, spec(name, json!({"privateKey": key}))).await;
    }
    let port = plane.server.rsplit(':').next().unwrap().to_string();
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    for (name, algorithm, _) in algorithms {
        wait_ready(&admin, &ns, name).await;
        let s = secret(&admin, &ns, &format!("{name}-kubeconfig"))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(dir.path().join(key), &s.data.as_ref().unwrap()[key].0).unwrap();
        }
        let path = |f: &str| dir.path().join(f).display().to_string();
        let python = std::process::Command::new("python3")
            .args(["-c", r#"
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[4]), context=ctx)
c.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", sys.argv[5], {"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, r.read().decode())
"#, &path("tls.crt"), &path("tls.key"), &path("ca.crt"), &port, body])
            .output()
            .expect("python3");
        let out = String::from_utf8_lossy(&python.stdout);
        assert!(
            python.status.success()
                && out.starts_with("201")
                && out.contains(&format!("\"username\":\"{name}\"")),
            "{algorithm} with Python: {out} {}",
            String::from_utf8_lossy(&python.stderr)
        );
        let request = format!(
            "POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut openssl = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-cert",
                &path("tls.crt"),
                "-key",
                &path("tls.key"),
                "-CAfile",
                &path("ca.crt"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl");
        use std::io::Write;
        openssl
            .stdin
            .take()
            .unwrap()
            .write_all(request.as_bytes())
            .unwrap();
        let output = openssl.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(
            out.starts_with("HTTP/1.1 201") && out.contains(&format!("\"username\":\"{name}\"")),
            "{algorithm} with openssl: {out} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The credential ID the status records is the one the API server reports for the issued
/// kubeconfig (what its audit log names), and `inspect` prints it; `kubeconfig-authority
/// renew` forces one renewal, recorded in status, and the same request again does nothing.
#[tokio::test]
async fn renewal_on_request_and_the_credential_id_of_the_audit_log() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let plane = plane();
    let (admin, ns) = setup("renew", &plane.ca).await;
    apply(&admin, &ns, "rita", spec("rita", json!({}))).await;
    let status = wait_ready(&admin, &ns, "rita").await.status.unwrap();
    let id = status
        .credential_id
        .clone()
        .expect("status.credentialId")
        .to_string();
    assert!(id.starts_with("X509SHA256="), "{id}");
    let yaml = kubeconfig_of(&admin, &ns, "rita-kubeconfig").await;
    let review = Api::<SelfSubjectReview>::all(client_from_kubeconfig(&yaml).await)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let extra = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.extra)
        .unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/credential-id"),
        Some(&vec![id.clone()]),
        "the API server names the certificate as the status does"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &yaml).unwrap();
    let inspected = std::process::Command::new(BIN)
        .args(["inspect", "-o", "json"])
        .arg(file.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(report["certificate"]["credentialId"], json!(id));

    // `renew` asks once: a new certificate, the request recorded.
    let renewed = std::process::Command::new(BIN)
        .args(["renew", "rita", "-n", &ns])
        .env("KUBECONFIG", plane.admin_kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        renewed.status.success(),
        "{}",
        String::from_utf8_lossy(&renewed.stderr)
    );
    let asked = eventually(Duration::from_secs(10), "a renewal on request", || {
        let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
        let first = status.serial_number.clone();
        async move {
            let kc = api.get("rita").await.map_err(|e| e.to_string())?;
            let asked = kc
                .annotations()
                .get("kubeconfig-authority.dev/renew-requested-at")
                .cloned();
            let s = kc.status.clone().unwrap_or_default();
            let ready = ready_condition(&kc).map(|c| c.1);
            if s.serial_number != first
                && s.renew_requested_at == asked
                && ready.as_deref() == Some("Renewed")
            {
                Ok((asked, s.serial_number))
            } else {
                Err(format!(
                    "{ready:?} {:?} {:?}",
                    s.serial_number, s.renew_requested_at
                ))
            }
        }
    })
    .await;
    // The same value again, and a change that brings the Kubeconfig back: nothing is issued.
    let (value, serial) = asked;
    Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .patch(
            "rita",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"kubeconfig-authority.dev/renew-requested-at": value}}})),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch(
            "rita-kubeconfig",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kc = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .get("rita")
        .await
        .unwrap();
    assert_eq!(kc.status.unwrap().serial_number, serial, "nothing reissued");
}

/// One forced renewal per request, however many events bring the Kubeconfig back meanwhile:
/// a reconcile that runs before the watch has brought the status of the renewal (which
/// records the request) decides from that status all the same. The Secret is edited every few
/// milliseconds while the renewal happens, each edit a reconcile, and the Secret's own watch
/// must show one new certificate, not two.
#[tokio::test]
async fn a_forced_renewal_happens_once_whatever_events_race_it() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{WatchEvent, WatchParams};
    let plane = plane();
    let (admin, ns) = setup("renew-once", &plane.ca).await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    for round in 0..3 {
        let name = format!("ruth-{round}");
        let secret_name = format!("{name}-kubeconfig");
        apply(&admin, &ns, &name, spec(&name, json!({}))).await;
        wait_ready(&admin, &ns, &name).await;
        let first = serial_of(&kubeconfig_of(&admin, &ns, &secret_name).await).0;
        let from = secrets
            .get(&secret_name)
            .await
            .unwrap()
            .resource_version()
            .unwrap();
        let mut seen = secrets
            .watch(
                &WatchParams::default().fields(&format!("metadata.name={secret_name}")),
                &from,
            )
            .await
            .unwrap()
            .boxed();
        Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {
                    "kubeconfig-authority.dev/renew-requested-at": "2026-11-30T12:00:00Z"}}})),
            )
            .await
            .unwrap();
        for i in 0..60 {
            let touch = json!({"metadata": {"annotations": {"touched": i.to_string()}}});
            secrets
                .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&touch))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut serials = vec![first.clone()];
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_millis(500), seen.try_next()).await
        {
            let (WatchEvent::Added(s) | WatchEvent::Modified(s)) = event else {
                continue;
            };
            let yaml = String::from_utf8(s.data.unwrap()["kubeconfig"].0.clone()).unwrap();
            let serial = serial_of(&yaml).0;
            if serials.last() != Some(&serial) {
                serials.push(serial);
            }
        }
        assert_eq!(
            serials.len(),
            2,
            "round {round}: one renewal for one request, certificates in turn: {serials:?}"
        );
    }
}

/// A finalizer patch whose test fails (the cache was behind the finalizers) is told apart from
/// an object that fails validation, as the API server answers them: the first is no error
/// (the watch brings the object back), the second stays one (`client::finalizer_outcome`).
#[tokio::test]
async fn a_failed_patch_test_is_told_apart_from_a_validation_error() {
    use kubeconfig_authority::client::failed_test;
    let plane = plane();
    let ns = plane.namespace("patch-test").await;
    let admin = plane.admin().await;
    let api = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
    apply(&admin, &ns, "pat", spec("pat", json!({}))).await;
    let stale = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["someone/else"]},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "mine"},
    ]);
    let patch = |p: serde_json::Value| {
        let api = api.clone();
        async move {
            match api
                .patch(
                    "pat",
                    &PatchParams::default(),
                    &Patch::<()>::Json(serde_json::from_value(p).unwrap()),
                )
                .await
            {
                Err(kube::Error::Api(status)) => *status,
                other => panic!("expected a refusal: {other:?}"),
            }
        }
    };
    let status = patch(stale).await;
    assert!(failed_test(&status), "a failed test: {status:?}");
    let invalid = json!([{"op": "replace", "path": "/spec/validity", "value": "forever"}]);
    let status = patch(invalid).await;
    assert_eq!(status.code, 422, "{status:?}");
    assert!(!failed_test(&status), "a validation error: {status:?}");
}

/// A new Secret is created without a read first (`client::create`): by a plain create, never
/// over a Secret that exists already; the fields it wrote become applied ones
/// (`client::adoption_patch`) before an apply that leaves one out, so that the apply removes it.
#[tokio::test]
async fn a_create_never_overwrites_and_its_fields_are_adopted_before_an_apply_drops_one() {
    use kubeconfig_authority::{
        api::FIELD_MANAGER,
        client::{adoption_patch, create, merge_patch},
    };
    let plane = plane();
    let ns = plane.namespace("create").await;
    let admin = plane.admin().await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let ours = |data: &[(&str, &str)]| -> Secret {
        let mut secret: Secret = serde_json::from_value(json!({"apiVersion": "v1",
            "kind": "Secret", "metadata": {"name": "s", "labels": {"by": "us"}}}))
        .unwrap();
        secret.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        secret
    };
    let created = create(&admin, Some(&ns), &ours(&[("a", "1"), ("b", "2")]))
        .await
        .unwrap()
        .expect("created");
    let live = secrets.get("s").await.unwrap();
    // The answer's resourceVersion is the one of the object made.
    assert_eq!(live.metadata.resource_version, created);
    assert!(created.is_some());
    assert_eq!(live.data.as_ref().unwrap()["b"].0, b"2");
    assert_eq!(managers(&live), [ours_as("Update")]);
    // Once it exists, nothing is written: not over our own, not over someone else's.
    assert!(
        create(&admin, Some(&ns), &ours(&[("a", "changed")]))
            .await
            .unwrap()
            .is_none()
    );
    let theirs: Secret = serde_json::from_value(json!({"metadata": {"name": "t"},
        "stringData": {"x": "theirs"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let mut over: Secret = ours(&[("y", "ours")]);
    over.metadata.name = Some("t".into());
    assert!(create(&admin, Some(&ns), &over).await.unwrap().is_none());
    let t = secrets.get("t").await.unwrap();
    assert_eq!(t.data.unwrap().keys().collect::<Vec<_>>(), ["x"]);
    assert!(t.metadata.labels.is_none());
    let s = secrets.get("s").await.unwrap();
    assert_eq!(s.data.as_ref().unwrap()["a"].0, b"1");

    let apply_a = || async {
        secrets
            .patch(
                "s",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ours(&[("a", "1")])),
            )
            .await
            .unwrap()
    };
    // What this is for: an apply of the same manager leaves a created field in place.
    let applied = apply_a().await;
    assert_eq!(
        applied.data.unwrap().keys().collect::<Vec<_>>(),
        ["a", "b"],
        "the API server removed a field an update owns: adoption is no longer needed"
    );
    // Adopted, the fields are the manager's applied ones, and the next apply drops `b`. The
    // live resourceVersion is the adoption's precondition.
    let live = secrets.get("s").await.unwrap();
    let patch = adoption_patch(&live.metadata, time_now()).expect("an Update entry of ours");
    let mut stale = patch.clone();
    stale["metadata"]["resourceVersion"] = json!(created);
    let refused = merge_patch::<Secret>(&admin, Some(&ns), "s", &stale).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 409),
        "{refused:?}"
    );
    merge_patch::<Secret>(&admin, Some(&ns), "s", &patch)
        .await
        .unwrap();
    let adopted = secrets.get("s").await.unwrap();
    assert_eq!(adopted.data, live.data, "the adoption changes no data");
    assert_eq!(managers(&adopted), [ours_as("Apply")]);
    assert_eq!(adoption_patch(&adopted.metadata, time_now()), None);
    let applied = apply_a().await;
    assert_eq!(
        applied.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(applied.labels()["by"], "us");
}

fn time_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    kubeconfig_authority::model::to_time(time::OffsetDateTime::now_utc())
}

/// The controller's field manager with an operation, as [`managers`] lists it.
fn ours_as(operation: &str) -> (String, String) {
    (
        kubeconfig_authority::api::FIELD_MANAGER.to_string(),
        operation.to_string(),
    )
}

/// The managers of an object's fields and their operations, sorted.
fn managers(object: &impl ResourceExt) -> Vec<(String, String)> {
    let mut managers: Vec<_> = object
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    managers.sort();
    managers
}

/// The controller creates a Secret by a plain create; a reissue that keeps its keys is one
/// apply, and a spec that drops keys (`certificateKeys: false`) gets them removed.
#[tokio::test]
async fn keys_a_kubeconfig_stops_asking_for_leave_its_secret() {
    let plane = plane();
    let (admin, ns) = setup("drop-keys", &plane.ca).await;
    apply(&admin, &ns, "kim", spec("kim", json!({}))).await;
    let first = wait_ready(&admin, &ns, "kim").await.status.unwrap();
    let live = secret(&admin, &ns, "kim-kubeconfig").await.unwrap();
    assert_eq!(managers(&live), [ours_as("Update")]);

    let reissued = |keys: &'static [&'static str]| {
        let (admin, ns) = (admin.clone(), ns.clone());
        let before = first.serial_number.clone();
        async move {
            eventually(Duration::from_secs(10), "the Secret rewritten", || {
                let (admin, ns, before) = (admin.clone(), ns.clone(), before.clone());
                async move {
                    let s = secret(&admin, &ns, "kim-kubeconfig")
                        .await
                        .ok_or("no Secret")?;
                    let data = s.data.clone().unwrap_or_default();
                    let yaml = String::from_utf8(data["kubeconfig"].0.clone())
                        .map_err(|e| e.to_string())?;
                    let serial = Some(serial_of(&yaml).0);
                    let found: Vec<&str> = data.keys().map(String::as_str).collect();
                    if serial != before && found == keys {
                        Ok((s, yaml))
                    } else {
                        Err(format!("{found:?}"))
                    }
                }
            })
            .await
        }
    };
    // A reissue with the same keys: one apply, nothing adopted.
    apply(
        &admin,
        &ns,
        "kim",
        spec("kim", json!({"groups": ["developers", "ops"]})),
    )
    .await;
    let (live, _) = reissued(&["ca.crt", "kubeconfig", "tls.crt", "tls.key", "value"]).await;
    assert_eq!(managers(&live), [ours_as("Apply"), ours_as("Update")]);

    // Keys dropped: adopted, then applied without them.
    apply(
        &admin,
        &ns,
        "kim",
        spec(
            "kim",
            json!({"groups": ["developers", "ops"], "secretRef": {"name": "kim-kubeconfig",
                "certificateKeys": false, "kubeconfigKeys": ["kubeconfig"]}}),
        ),
    )
    .await;
    let (live, yaml) = reissued(&["kubeconfig"]).await;
    assert_eq!(managers(&live), [ours_as("Apply")]);
    let (user, groups) = whoami(client_from_kubeconfig(&yaml).await).await;
    assert_eq!(user, "kim");
    assert!(groups.iter().any(|g| g == "ops"), "{groups:?}");
    wait_ready(&admin, &ns, "kim").await;
}
