//! GitOps credentials against the real control plane: rotating ServiceAccount-token
//! kubeconfigs bound to their Secret, copies across a tenant's namespaces, onboarding by
//! annotation, certificates through the CSR API, and an authority that takes its server from a
//! kubeconfig Secret.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    certificates::v1::CertificateSigningRequest,
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::{Authority, Kubeconfig};
use kubeconfig_authority_pki::kubeconfig as kc_file;
use serde_json::{Value, json};

use crate::{
    apply, control_plane::whoami, delete_and_wait, eventually, grant_controller, kubeconfig_of,
    plane, secret, support::client_from_kubeconfig, until_code, wait_condition, wait_ready,
};

pub(crate) async fn service_account(admin: &Client, ns: &str, name: &str, annotations: Value) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
            .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&sa),
        )
        .await
        .unwrap();
}

async fn authority(admin: &Client, ns: &str, name: &str, spec: Value) {
    let a: Authority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<Authority>::namespaced(admin.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&a),
        )
        .await
        .unwrap();
}

/// A namespace with a ServiceAccount `flux` and an Authority `tokens` that makes token
/// kubeconfigs for this API server (its CA from the namespace's kube-root-ca.crt).
pub(crate) async fn token_setup(prefix: &str) -> (Client, String) {
    let plane = plane();
    let ns = plane.namespace(prefix).await;
    let admin = plane.admin().await;
    service_account(&admin, &ns, "flux", json!({})).await;
    authority(
        &admin,
        &ns,
        "tokens",
        json!({"server": plane.server, "signer": {"serviceAccountToken": {}}}),
    )
    .await;
    (admin, ns)
}

fn token_of(kubeconfig: &str) -> String {
    kc_file::parse(kubeconfig).unwrap().token.expect("a token")
}

pub(crate) fn token_id(kc: &Kubeconfig) -> String {
    kc.status
        .as_ref()
        .and_then(|s| s.token_id.clone())
        .unwrap_or_default()
}

/// The kubeconfig with its user impersonating `user` (kubectl's `--as`).
fn impersonating(kubeconfig: &str, user: &str) -> String {
    let mut value: serde_yaml::Value = serde_yaml::from_str(kubeconfig).unwrap();
    value["users"][0]["user"]["as"] = user.into();
    serde_yaml::to_string(&value).unwrap()
}

/// The API server's answer to a SelfSubjectReview with this kubeconfig.
async fn review_code(kubeconfig: &str) -> Result<SelfSubjectReview, kube::Error> {
    let review: SelfSubjectReview = serde_json::from_value(json!({})).unwrap();
    Api::<SelfSubjectReview>::all(client_from_kubeconfig(kubeconfig).await)
        .create(&PostParams::default(), &review)
        .await
}

/// A token kubeconfig asked for 10 minutes. The renewal point is configurable with
/// `renewBefore` (the default is a third of the lifetime, so at most 80% of it passes before a
/// renewal); the test sets it to 9m40s so that the rotation comes as soon as the controller
/// allows (a minute after issuance) instead of the 6m40s a default would take.
#[tokio::test]
async fn token_kubeconfigs_authenticate_rotate_and_die_with_their_secret() {
    let (admin, ns) = token_setup("token").await;
    apply(
        &admin,
        &ns,
        "flux",
        json!({
            "authorityRef": {"name": "tokens"},
            "serviceAccountRef": {"name": "flux", "impersonateSelf": true},
            "validity": "10m",
            "renewBefore": "9m40s",
            "secretRef": {"name": "flux-kubeconfig"},
        }),
    )
    .await;
    let kc = wait_ready(&admin, &ns, "flux").await;
    let status = kc.status.clone().unwrap();
    let lifetime =
        status.not_after.unwrap().0.as_second() - status.not_before.unwrap().0.as_second();
    assert!(
        (590..=600).contains(&lifetime),
        "the API server granted {lifetime}s"
    );
    assert!(!token_id(&kc).is_empty() && status.serial_number.is_none());
    let s = secret(&admin, &ns, "flux-kubeconfig").await.unwrap();
    let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["kubeconfig", "value"],
        "Capsule's key and Flux's default key"
    );
    let first = kubeconfig_of(&admin, &ns, "flux-kubeconfig").await;
    let (user, groups) = whoami(client_from_kubeconfig(&first).await).await;
    assert_eq!(user, format!("system:serviceaccount:{ns}:flux"));
    assert!(groups.contains(&format!("system:serviceaccounts:{ns}")));

    // Flux uses the kubeconfig and impersonates the same ServiceAccount: allowed by the Role
    // impersonateSelf asks for.
    let impersonating = impersonating(&first, &user);
    until_code("self-impersonation", 200, || review_code(&impersonating)).await;

    // Rotated in real time, before the renewal point has long passed. Every version of the
    // Secret seen meanwhile holds a kubeconfig (a rotation never empties it, even briefly).
    let emptied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let (emptied, secrets) = (
            emptied.clone(),
            Api::<Secret>::namespaced(admin.clone(), &ns),
        );
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::{WatchStreamExt, watcher};
            let config = watcher::Config::default().fields("metadata.name=flux-kubeconfig");
            let mut events = std::pin::pin!(watcher(secrets, config).applied_objects());
            while let Some(Ok(secret)) = events.next().await {
                let holds = secret
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key("kubeconfig"));
                if !holds {
                    emptied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    let rotated = eventually(Duration::from_secs(80), "the token rotated", || {
        let (admin, ns, old) = (admin.clone(), ns.clone(), token_id(&kc));
        async move {
            let kc = wait_ready(&admin, &ns, "flux").await;
            if token_id(&kc) != old && kc.status.as_ref().unwrap().conditions[0].reason == "Renewed"
            {
                Ok(kc)
            } else {
                Err(format!("still {}", token_id(&kc)))
            }
        }
    })
    .await;
    println!("rotated {:?} after Ready", started.elapsed());
    let second = kubeconfig_of(&admin, &ns, "flux-kubeconfig").await;
    assert_ne!(
        token_of(&first),
        token_of(&second),
        "the Secret holds the new token"
    );
    assert!(token_id(&rotated) != token_id(&kc));
    watch.abort();
    assert_eq!(
        emptied.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a version of the Secret without its kubeconfig was seen during rotation"
    );
    // Both tokens work until the old one expires.
    for kubeconfig in [&first, &second] {
        let (user, _) = whoami(client_from_kubeconfig(kubeconfig).await).await;
        assert_eq!(user, format!("system:serviceaccount:{ns}:flux"));
    }

    // Without impersonateSelf the Role goes, and so does the right.
    let plain = |secret: &str| {
        json!({
            "authorityRef": {"name": "tokens"},
            "serviceAccountRef": {"name": "flux"},
            "validity": "10m",
            "renewBefore": "9m40s",
            "secretRef": {"name": secret},
        })
    };
    apply(&admin, &ns, "flux", plain("flux-kubeconfig")).await;
    until_code("self-impersonation revoked", 403, || {
        review_code(&impersonating)
    })
    .await;

    // The Secret gets another name: the one left is deleted, and so the tokens bound to it are
    // refused; the new Secret holds a new token.
    apply(&admin, &ns, "flux", plain("flux-credentials")).await;
    let gone = |name: &'static str| {
        let admin = admin.clone();
        let ns = ns.clone();
        async move {
            eventually(
                Duration::from_secs(10),
                &format!("{name} removed"),
                || async {
                    match secret(&admin, &ns, name).await {
                        None => Ok(()),
                        Some(_) => Err("still there".to_string()),
                    }
                },
            )
            .await
        }
    };
    gone("flux-kubeconfig").await;
    let all_refused = |kubeconfigs: Vec<String>| async move {
        for kubeconfig in &kubeconfigs {
            eventually(Duration::from_secs(20), "the token refused", || async {
                match review_code(kubeconfig).await {
                    Err(kube::Error::Api(s)) if s.code == 401 => Ok(()),
                    other => Err(format!("{:?}", other.map(|_| "accepted"))),
                }
            })
            .await;
        }
    };
    all_refused(vec![first.clone(), second.clone()]).await;
    let third = eventually(Duration::from_secs(10), "the renamed Secret", || async {
        match secret(&admin, &ns, "flux-credentials").await {
            Some(_) => Ok(kubeconfig_of(&admin, &ns, "flux-credentials").await),
            None => Err("not yet".to_string()),
        }
    })
    .await;
    let (user, _) = whoami(client_from_kubeconfig(&third).await).await;
    assert_eq!(user, format!("system:serviceaccount:{ns}:flux"));

    // Deleting the Kubeconfig deletes the Secret the token is bound to: it stops working as
    // soon as the API server's cache of successful token authentications (10 s) lets go.
    delete_and_wait(&admin, &ns, "flux").await;
    let deleted = Instant::now();
    // The Secret is owned by the Kubeconfig: the garbage collector removes it.
    gone("flux-credentials").await;
    all_refused(vec![third]).await;
    let refused = deleted.elapsed();
    println!("the token refused {refused:?} after the Kubeconfig was gone");
    assert!(
        refused < Duration::from_secs(12),
        "within the API server's 10 s token cache"
    );
}

async fn labelled_namespace(admin: &Client, prefix: &str, labels: Value) -> String {
    let ns = plane().namespace(prefix).await;
    label_namespace(admin, &ns, labels).await;
    ns
}

async fn label_namespace(admin: &Client, ns: &str, labels: Value) {
    Api::<Namespace>::all(admin.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn copies_follow_a_tenant_s_namespaces_and_every_rotation() {
    let (admin, ns) = token_setup("dist").await;
    let tenant = format!("oil-{}", &ns[ns.len() - 6..]);
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(
            labelled_namespace(
                &admin,
                &format!("dist-m{i}"),
                json!({"capsule.clastix.io/tenant": tenant}),
            )
            .await,
        );
    }
    let taken = labelled_namespace(
        &admin,
        "dist-taken",
        json!({"capsule.clastix.io/tenant": tenant}),
    )
    .await;
    // The tenant's owner (Flux's ServiceAccount) may write Secrets in the tenant's namespaces,
    // as Capsule grants its owners; in one of them it may not.
    let flux = format!("system:serviceaccount:{ns}:flux");
    for member in members.iter().chain([&taken]) {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "tenant-owner"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "flux", "namespace": ns}],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), member)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }
    let unowned = labelled_namespace(
        &admin,
        "dist-unowned",
        json!({"capsule.clastix.io/tenant": tenant}),
    )
    .await;
    // The authority's policy lets copies go to the tenant's namespaces (default: nowhere).
    authority(
        &admin,
        &ns,
        "tokens",
        json!({"server": plane().server, "signer": {"serviceAccountToken": {}},
            "policy": {"distributionNamespaceSelector": {"matchLabels": {"capsule.clastix.io/tenant": tenant}}}}),
    )
    .await;
    let unmanaged: Secret = serde_json::from_value(
        json!({"metadata": {"name": "flux-kubeconfig"}, "stringData": {"kubeconfig": "mine"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &taken)
        .create(&PostParams::default(), &unmanaged)
        .await
        .unwrap();

    apply(
        &admin,
        &ns,
        "flux",
        json!({
            "authorityRef": {"name": "tokens"},
            "serviceAccountRef": {"name": "flux"},
            "validity": "10m",
            "renewBefore": "9m40s",
            "secretRef": {"name": "flux-kubeconfig"},
            "distribution": {"namespaceSelector": {"matchLabels": {"capsule.clastix.io/tenant": tenant}}},
        }),
    )
    .await;
    wait_ready(&admin, &ns, "flux").await;
    let copies_match = |expected: Vec<String>| {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            let primary = secret(&admin, &ns, "flux-kubeconfig")
                .await
                .ok_or("no primary")?
                .data;
            for m in &expected {
                let copy = secret(&admin, m, "flux-kubeconfig")
                    .await
                    .ok_or(format!("no copy in {m}"))?;
                if copy.data != primary {
                    return Err(format!("the copy in {m} differs"));
                }
            }
            let kc = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
                .get("flux")
                .await
                .map_err(|e| e.to_string())?;
            let status = kc.status.unwrap_or_default();
            let distributed = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Distributed")
                .cloned();
            match (status.distributed_copies, distributed) {
                (Some(n), Some(c)) if n as usize == expected.len() => Ok((c, token_id_of(&status))),
                other => Err(format!("{other:?}")),
            }
        }
    };
    let (condition, first_token) = eventually(Duration::from_secs(10), "three copies", || {
        copies_match(members.clone())
    })
    .await;
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "SecretConflict")
    );
    assert!(condition.message.contains(&taken), "{}", condition.message);
    assert!(
        condition
            .message
            .contains(&format!("{unowned} ({flux} may not create")),
        "{}",
        condition.message
    );
    assert!(
        secret(&admin, &unowned, "flux-kubeconfig").await.is_none(),
        "no copy where its identity could not write it"
    );
    let kept = secret(&admin, &taken, "flux-kubeconfig").await.unwrap();
    assert_eq!(
        kept.data.unwrap()["kubeconfig"].0,
        b"mine",
        "the unmanaged Secret is untouched"
    );

    // A rotation reaches every copy.
    let rotated = eventually(Duration::from_secs(80), "rotation copied", || {
        let check = copies_match(members.clone());
        let first = first_token.clone();
        async move {
            let (_, token) = check.await?;
            if token != first {
                Ok(token)
            } else {
                Err("not rotated yet".into())
            }
        }
    })
    .await;
    assert_ne!(rotated, first_token);

    // Looks that write nothing take nothing from the write budget (five copy writes a minute):
    // each change of a namespace brings the Kubeconfig back, and the copy it cannot write
    // (the unmanaged Secret in `taken`) once spent a write on every look, holding up the
    // removal below for the rest of the minute.
    for i in 0..6 {
        label_namespace(&admin, &taken, json!({"touched": i.to_string()})).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Relabelled away: its copy goes.
    label_namespace(
        &admin,
        &members[2],
        json!({"capsule.clastix.io/tenant": "gas"}),
    )
    .await;
    eventually(Duration::from_secs(10), "copy removed", || {
        let (admin, gone) = (admin.clone(), members[2].clone());
        async move {
            match secret(&admin, &gone, "flux-kubeconfig").await {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        }
    })
    .await;
    eventually(Duration::from_secs(10), "two copies", || {
        copies_match(members[..2].to_vec())
    })
    .await;

    // The Kubeconfig goes: every copy goes, the unmanaged Secret stays.
    delete_and_wait(&admin, &ns, "flux").await;
    for m in &members {
        assert!(
            secret(&admin, m, "flux-kubeconfig").await.is_none(),
            "copy in {m} removed"
        );
    }
    assert!(secret(&admin, &taken, "flux-kubeconfig").await.is_some());
}

fn token_id_of(status: &kubeconfig_authority::api::KubeconfigStatus) -> String {
    status.token_id.clone().unwrap_or_default()
}

#[tokio::test]
async fn annotated_service_accounts_get_a_kubeconfig_without_writing_one() {
    let (admin, ns) = token_setup("onboard").await;
    service_account(
        &admin,
        &ns,
        "ci",
        json!({"kubeconfig-authority.dev/authority": "tokens"}),
    )
    .await;
    let kc = eventually(Duration::from_secs(10), "a Kubeconfig made", || {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            Api::<Kubeconfig>::namespaced(admin, &ns)
                .get_opt("ci-kubeconfig")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    assert_eq!(
        kc.metadata.owner_references.as_ref().unwrap()[0].kind,
        "ServiceAccount"
    );
    wait_ready(&admin, &ns, "ci-kubeconfig").await;
    let kubeconfig = kubeconfig_of(&admin, &ns, "ci-kubeconfig").await;
    let (user, _) = whoami(client_from_kubeconfig(&kubeconfig).await).await;
    assert_eq!(user, format!("system:serviceaccount:{ns}:ci"));

    // Capsule's Flux addon annotation uses the controller's default authority.
    service_account(
        &admin,
        &ns,
        "capsule-flux",
        json!({"capsule.addon.fluxcd/enabled": "true"}),
    )
    .await;
    let capsule = eventually(
        Duration::from_secs(10),
        "the Capsule addon's Kubeconfig",
        || {
            let (admin, ns) = (admin.clone(), ns.clone());
            async move {
                Api::<Kubeconfig>::namespaced(admin, &ns)
                    .get_opt("capsule-flux-kubeconfig")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
    let aref = capsule.spec.authority_ref.unwrap();
    assert_eq!(
        (format!("{:?}", aref.kind).as_str(), aref.name.as_str()),
        ("ClusterAuthority", "default-ca")
    );
    assert_eq!(capsule.spec.secret_ref.name, "capsule-flux-kubeconfig");

    // Removing the annotations, or the ServiceAccount, removes what was made.
    service_account(
        &admin,
        &ns,
        "gone",
        json!({"kubeconfig-authority.dev/authority": "tokens"}),
    )
    .await;
    wait_condition(
        &admin,
        &ns,
        "gone-kubeconfig",
        "True",
        None,
        Duration::from_secs(10),
    )
    .await;
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .delete("gone", &Default::default())
        .await
        .unwrap();
    for sa in ["ci", "capsule-flux"] {
        service_account(&admin, &ns, sa, json!({})).await;
    }
    for name in [
        "ci-kubeconfig",
        "capsule-flux-kubeconfig",
        "gone-kubeconfig",
    ] {
        // The Secret goes with the Kubeconfig through kube-controller-manager's garbage
        // collector, which takes over 10 s when the suite runs with many threads.
        eventually(Duration::from_secs(30), "removed", || {
            let (admin, ns) = (admin.clone(), ns.clone());
            async move {
                let kc = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
                    .get_opt(name)
                    .await
                    .map_err(|e| e.to_string())?;
                match (kc, secret(&admin, &ns, name).await) {
                    (None, None) => Ok(()),
                    other => Err(format!("{:?}", (other.0.is_some(), other.1.is_some()))),
                }
            }
        })
        .await;
    }
}

#[tokio::test]
async fn certificates_through_the_csr_api_without_holding_the_ca_key() {
    let plane = plane();
    let ns = plane.namespace("csr").await;
    let admin = plane.admin().await;
    // The server and CA come from a kubeconfig Secret shaped like Kamaji's admin kubeconfig.
    let admin_kubeconfig = plane.kubeconfig_for("tcp-admin", &["system:masters"]);
    let kamaji: Secret = serde_json::from_value(json!({"metadata": {"name": "tcp-admin-kubeconfig"}, "stringData": {"admin.svc": admin_kubeconfig}})).unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &kamaji)
        .await
        .unwrap();
    authority(
        &admin,
        &ns,
        "csr",
        json!({
            "kubeconfigSecretRef": {"name": "tcp-admin-kubeconfig", "key": "admin.svc"},
            "signer": {"certificateSigningRequest": {}},
        }),
    )
    .await;
    apply(&admin, &ns, "carol", json!({"authorityRef": {"name": "csr"}, "username": "carol", "groups": ["dev"], "validity": "1h", "secretRef": {"name": "carol-kubeconfig"}})).await;
    let kc = wait_condition(&admin, &ns, "carol", "True", None, Duration::from_secs(20)).await;
    assert!(kc.status.unwrap().serial_number.is_some());
    let kubeconfig = kubeconfig_of(&admin, &ns, "carol-kubeconfig").await;
    assert_eq!(kc_file::parse(&kubeconfig).unwrap().server, plane.server);
    let (user, groups) = whoami(client_from_kubeconfig(&kubeconfig).await).await;
    assert_eq!(user, "carol");
    assert!(
        groups.contains(&"dev".to_string()) && groups.contains(&"kubeconfig:carol".to_string()),
        "{groups:?}"
    );
    // The signed request was cleaned up.
    let uid = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .get("carol")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let selector =
        ListParams::default().labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    let csrs = Api::<CertificateSigningRequest>::all(admin.clone());
    assert!(csrs.list(&selector).await.unwrap().items.is_empty());

    // An RSA key (taken from the controller's key pool, as for a CA's certificates) signs its
    // request, and the kubeconfig with it works.
    apply(&admin, &ns, "dave", json!({"authorityRef": {"name": "csr"}, "username": "dave", "validity": "1h", "privateKey": {"algorithm": "RSA", "size": 2048}, "secretRef": {"name": "dave-kubeconfig"}})).await;
    wait_condition(&admin, &ns, "dave", "True", None, Duration::from_secs(20)).await;
    let kubeconfig = kubeconfig_of(&admin, &ns, "dave-kubeconfig").await;
    let key = kc_file::parse(&kubeconfig).unwrap().client_key_pem.unwrap();
    let key = rcgen::KeyPair::from_pem(&key).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_RSA_SHA256);
    assert_eq!(
        whoami(client_from_kubeconfig(&kubeconfig).await).await.0,
        "dave"
    );

    // A signer nobody runs (the controller may approve for it): the condition says so, and the
    // controller keeps serving the others.
    grant_controller(
        &admin,
        "approve-example-signers",
        json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"], "resourceNames": ["example.com/*"]}]),
    )
    .await;
    authority(
        &admin,
        &ns,
        "nobody",
        json!({"server": plane.server, "caBundle": {"inline": plane.ca_cert_pem},
        "signer": {"certificateSigningRequest": {"signerName": "example.com/nobody"}}}),
    )
    .await;
    apply(&admin, &ns, "dave", json!({"authorityRef": {"name": "nobody"}, "username": "dave", "validity": "1h", "secretRef": {"name": "dave-kubeconfig"}})).await;
    let kc = wait_condition(
        &admin,
        &ns,
        "dave",
        "False",
        Some("CSRPending"),
        Duration::from_secs(10),
    )
    .await;
    let message = &kc.status.unwrap().conditions[0].message;
    assert!(
        message.contains("example.com/nobody") && message.contains("check that the signer runs"),
        "{message}"
    );
    assert!(secret(&admin, &ns, "dave-kubeconfig").await.is_none());
    apply(&admin, &ns, "erin", json!({"authorityRef": {"name": "csr"}, "username": "erin", "validity": "1h", "secretRef": {"name": "erin-kubeconfig"}})).await;
    wait_condition(&admin, &ns, "erin", "True", None, Duration::from_secs(20)).await;
    // Its pending request goes with it.
    let uid = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .get("dave")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let selector =
        ListParams::default().labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    assert_eq!(csrs.list(&selector).await.unwrap().items.len(), 1);
    delete_and_wait(&admin, &ns, "dave").await;
    assert!(csrs.list(&selector).await.unwrap().items.is_empty());
}
