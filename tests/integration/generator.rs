//! KubeconfigGenerator against the real control plane: Kamaji-shaped TenantControlPlanes and
//! Cluster API-shaped Clusters (CRDs with the fields used, and the CA and admin kubeconfig
//! Secrets shaped like their projects', pointing at real API servers), one working kubeconfig
//! per object.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use kubeconfig_authority::api::{Authority, Kubeconfig, KubeconfigGenerator};
use serde_json::{Value, json};

use crate::{
    apply_crds,
    control_plane::whoami,
    eventually, kubeconfig_of, plane,
    support::{ControlPlane, client_from_kubeconfig},
};

/// A kind that stands for a cluster, as its project defines it (the fields used).
struct ClusterKind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

const TENANT_CONTROL_PLANE: ClusterKind = ClusterKind {
    group: "kamaji.clastix.io",
    version: "v1alpha1",
    kind: "TenantControlPlane",
    plural: "tenantcontrolplanes",
};

const CLUSTER_API_CLUSTER: ClusterKind = ClusterKind {
    group: "cluster.x-k8s.io",
    version: "v1beta2",
    kind: "Cluster",
    plural: "clusters",
};

async fn install_crd(admin: &Client, kind: &ClusterKind) {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": format!("{}.{}", kind.plural, kind.group)},
        "spec": {
            "group": kind.group,
            "names": {"kind": kind.kind, "plural": kind.plural, "singular": kind.kind.to_lowercase()},
            "scope": "Namespaced",
            "versions": [{"name": kind.version, "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}],
        },
    }))
    .unwrap();
    apply_crds(admin, vec![crd]).await;
}

fn object_api(admin: &Client, ns: &str, kind: &ClusterKind) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(kind.group, kind.version, kind.kind);
    Api::namespaced_with(
        admin.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, kind.plural),
    )
}

fn tcp_api(admin: &Client, ns: &str) -> Api<DynamicObject> {
    object_api(admin, ns, &TENANT_CONTROL_PLANE)
}

/// A TenantControlPlane and the two Secrets Kamaji writes for it; `ca_key` replaces the CA key
/// (to break it).
async fn tenant_control_plane(
    admin: &Client,
    ns: &str,
    name: &str,
    labels: Value,
    ca_key: Option<&str>,
) {
    let tenant = Tenant {
        kind: &TENANT_CONTROL_PLANE,
        name,
        labels,
    };
    tenant_in(plane(), admin, ns, tenant, ca_key).await;
}

/// An object that stands for a cluster.
struct Tenant<'a> {
    kind: &'a ClusterKind,
    name: &'a str,
    labels: Value,
}

/// A TenantControlPlane or a Cluster API Cluster whose cluster is `plane`, with the Secrets its
/// project writes for it: Kamaji's `<name>-ca` (`ca.crt`, `ca.key`) and
/// `<name>-admin-kubeconfig` (`admin.conf`, `admin.svc`), Cluster API's `<name>-ca`
/// (`tls.crt`, `tls.key`) and `<name>-kubeconfig` (`value`).
async fn tenant_in(
    plane: &ControlPlane,
    admin: &Client,
    ns: &str,
    tenant: Tenant<'_>,
    ca_key: Option<&str>,
) {
    let Tenant { kind, name, labels } = tenant;
    let params = PatchParams::apply("tests").force();
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
    let kamaji = kind.kind == TENANT_CONTROL_PLANE.kind;
    let (cert, key) = if kamaji {
        ("ca.crt", "ca.key")
    } else {
        ("tls.crt", "tls.key")
    };
    let ca: Secret = serde_json::from_value(json!({"metadata": {"name": format!("{name}-ca")},
        "stringData": {cert: plane.ca.cert_pem, key: ca_key.unwrap_or(&plane.ca.key_pem)}}))
    .unwrap();
    secrets
        .patch(&format!("{name}-ca"), &params, &Patch::Apply(&ca))
        .await
        .unwrap();
    let admin_kubeconfig = plane.kubeconfig_for("kubernetes-admin", &["system:masters"]);
    let (secret_name, keys) = if kamaji {
        (
            format!("{name}-admin-kubeconfig"),
            json!({"admin.conf": admin_kubeconfig, "admin.svc": admin_kubeconfig}),
        )
    } else {
        (
            format!("{name}-kubeconfig"),
            json!({"value": admin_kubeconfig}),
        )
    };
    let kubeconfigs: Secret =
        serde_json::from_value(json!({"metadata": {"name": secret_name}, "stringData": keys}))
            .unwrap();
    secrets
        .patch(&secret_name, &params, &Patch::Apply(&kubeconfigs))
        .await
        .unwrap();
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/{}", kind.group, kind.version), "kind": kind.kind,
        "metadata": {"name": name, "labels": labels},
        "spec": {"controlPlane": {"deployment": {"replicas": 1}}, "kubernetes": {"version": "v1.35.4"}},
    }))
    .unwrap();
    object_api(admin, ns, kind)
        .patch(name, &params, &Patch::Apply(&object))
        .await
        .unwrap();
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

/// Waits until the generator's status shows these counts and errors (and is current).
async fn counts(
    admin: &Client,
    name: &str,
    resources: i32,
    available: i32,
    errors: &[String],
) -> Duration {
    let started = Instant::now();
    let api = Api::<KubeconfigGenerator>::all(admin.clone());
    eventually(
        Duration::from_secs(20),
        &format!("{resources} resources, {available} available, errors {errors:?}"),
        || {
            let api = api.clone();
            async move {
                let g = api.get(name).await.map_err(|e| e.to_string())?;
                let s = g.status.unwrap_or_default();
                let got: Vec<String> = s.errors.iter().map(|e| e.resource.clone()).collect();
                if s.resources == resources
                    && s.available_resources == available
                    && got == errors
                    && s.observed_generation == g.metadata.generation
                {
                    Ok(())
                } else {
                    Err(format!(
                        "{} resources, {} available, errors {:?}",
                        s.resources, s.available_resources, s.errors
                    ))
                }
            }
        },
    )
    .await;
    started.elapsed()
}

async fn kubeconfig_exists(admin: &Client, ns: &str, name: &str) -> bool {
    Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

/// Waits until the Kubeconfig, its Secret and its Authority are all gone: the generator
/// deletes the Kubeconfig and then the Authority, kube-controller-manager's garbage collector
/// the Secret, in no promised order between them. The collector takes over 10 s when the whole
/// suite runs with many threads: 30 s are allowed.
async fn gone(admin: &Client, ns: &str, name: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{ns}/{name} gone"),
        || async {
            let secret = Api::<Secret>::namespaced(admin.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            let authority = Api::<Authority>::namespaced(admin.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            match (kubeconfig_exists(admin, ns, name).await, secret, authority) {
                (false, None, None) => Ok(()),
                (kubeconfig, secret, authority) => Err(format!(
                    "still there: Kubeconfig {kubeconfig}, Secret {}, Authority {}",
                    secret.is_some(),
                    authority.is_some()
                )),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_generator_keeps_one_kubeconfig_per_tenant_control_plane() {
    let plane = plane();
    let admin = plane.admin().await;
    install_crd(&admin, &TENANT_CONTROL_PLANE).await;
    let a = plane.namespace("gen-a").await;
    let b = plane.namespace("gen-b").await;
    let c = plane.namespace("gen-c").await;
    let env = format!("prod-{}", &a[a.len() - 6..]);
    label_namespace(&admin, &a, json!({"environment": env})).await;
    label_namespace(&admin, &b, json!({"environment": env})).await;
    tenant_control_plane(&admin, &a, "alpha", json!({"team": "red"}), None).await;
    tenant_control_plane(&admin, &b, "bravo", json!({"team": "blue"}), None).await;
    tenant_control_plane(&admin, &c, "charlie", json!({"team": "green"}), None).await;

    let name = format!("tenant-{}", &a[a.len() - 6..]);
    let generator: KubeconfigGenerator = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "KubeconfigGenerator",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"environment": env}},
            "target": {"selector": {"matchExpressions": [{"key": "excluded", "operator": "DoesNotExist"}]}},
            "user": {"fromDefinition": "metadata.name"},
            "groups": [{"stringValue": "customer-admins"}, {"fromDefinition": "metadata.labels['team']"}],
            "controlPlaneEndpointFrom": "admin.conf",
            "validity": "1h",
        },
    }))
    .unwrap();
    apply_generator(&admin, &name, &generator).await;
    let took = counts(&admin, &name, 2, 2, &[]).await;
    println!("two kubeconfigs Ready {took:?} after the generator was applied");

    // Each works, with the user and groups from stringValue and fromDefinition.
    for (ns, tcp, team) in [(&a, "alpha", "red"), (&b, "bravo", "blue")] {
        let kubeconfig = kubeconfig_of(&admin, ns, &format!("{tcp}-{name}")).await;
        let (user, groups) = whoami(client_from_kubeconfig(&kubeconfig).await).await;
        assert_eq!(user, tcp);
        assert!(
            groups.contains(&"customer-admins".to_string()) && groups.contains(&team.to_string()),
            "{groups:?}"
        );
    }
    assert!(
        !kubeconfig_exists(&admin, &c, &format!("charlie-{name}")).await,
        "not in a selected namespace"
    );

    // New objects get theirs within seconds.
    tenant_control_plane(&admin, &a, "delta", json!({"team": "red"}), None).await;
    tenant_control_plane(&admin, &b, "echo", json!({"team": "blue"}), None).await;
    let took = counts(&admin, &name, 4, 4, &[]).await;
    println!("new objects Ready {took:?} after they were created");

    // Relabelled out of the selector, and deleted: theirs go.
    tcp_api(&admin, &a)
        .patch(
            "delta",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"excluded": "true"}}})),
        )
        .await
        .unwrap();
    tcp_api(&admin, &b)
        .delete("echo", &Default::default())
        .await
        .unwrap();
    counts(&admin, &name, 2, 2, &[]).await;
    gone(&admin, &a, &format!("delta-{name}")).await;
    gone(&admin, &b, &format!("echo-{name}")).await;

    // A broken CA Secret: that object is in errors, the others stay Ready.
    tenant_control_plane(
        &admin,
        &a,
        "foxtrot",
        json!({"team": "red"}),
        Some("not a key"),
    )
    .await;
    counts(&admin, &name, 3, 2, &[format!("{a}/foxtrot")]).await;
    let g = Api::<KubeconfigGenerator>::all(admin.clone())
        .get(&name)
        .await
        .unwrap();
    let message = &g.status.unwrap().errors[0].message;
    assert!(message.starts_with("CASecretInvalid"), "{message}");

    // A namespace leaves the namespace selector: its kubeconfigs go.
    label_namespace(&admin, &a, json!({"environment": null})).await;
    counts(&admin, &name, 1, 1, &[]).await;
    gone(&admin, &a, &format!("alpha-{name}")).await;
    gone(&admin, &a, &format!("foxtrot-{name}")).await;

    // Writing a generator needs the right to impersonate anyone: someone who may only write
    // generators is refused.
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "write-generators"},
        "rules": [{"apiGroups": ["kubeconfig-authority.dev"], "resources": ["kubeconfiggenerators"], "verbs": ["create", "update", "patch"]}],
    }))
    .unwrap();
    let params = PatchParams::apply("tests").force();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .patch("write-generators", &params, &Patch::Apply(&role))
        .await
        .unwrap();
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "write-generators"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "write-generators"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "generator-author"}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .patch("write-generators", &params, &Patch::Apply(&binding))
        .await
        .unwrap();
    let author = Api::<KubeconfigGenerator>::all(plane.client_for("generator-author", &[]).await);
    let mut attempt = generator.clone();
    attempt.metadata.name = Some(format!("{name}-2"));
    let message = eventually(Duration::from_secs(10), "the generator guard", || {
        let (author, attempt) = (author.clone(), attempt.clone());
        async move {
            let dry = kube::api::PostParams {
                dry_run: true,
                ..Default::default()
            };
            match author.create(&dry, &attempt).await {
                Err(kube::Error::Api(s)) if s.message.contains("impersonate") => Ok(s.message),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(message.contains("can mint any identity"), "{message}");

    // The generator goes: everything it made goes.
    Api::<KubeconfigGenerator>::all(admin.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
    gone(&admin, &b, &format!("bravo-{name}")).await;
}

/// Each tenant's RBAC goes to its own cluster: two TenantControlPlanes whose admin kubeconfigs
/// point at two other real API servers, and a Cluster API Cluster beside the second.
#[tokio::test]
async fn a_generator_binds_each_tenant_s_roles_in_its_own_cluster() {
    let plane = plane();
    let admin = plane.admin().await;
    install_crd(&admin, &TENANT_CONTROL_PLANE).await;
    install_crd(&admin, &CLUSTER_API_CLUSTER).await;
    let ns = plane.namespace("gen-remote").await;
    let suffix = ns[ns.len() - 6..].to_string();
    let env = format!("remote-{suffix}");
    label_namespace(&admin, &ns, json!({"environment": env})).await;
    let clusters = [
        ControlPlane::start_other().await,
        ControlPlane::start_other().await,
    ];
    // (object, its kind, the index of its cluster)
    let tenants = [
        ("bravo", &TENANT_CONTROL_PLANE, 0),
        ("charlie", &TENANT_CONTROL_PLANE, 1),
        ("delta", &CLUSTER_API_CLUSTER, 1),
    ];
    for (tenant, kind, cluster) in tenants {
        let object = Tenant {
            kind,
            name: tenant,
            labels: json!({"team": tenant}),
        };
        tenant_in(&clusters[cluster], &admin, &ns, object, None).await;
    }
    let name = format!("remote-{suffix}");
    let capi = format!("capi-{suffix}");
    // The TenantControlPlanes' credentials are registered with Argo CD too, one cluster each.
    let argocd = plane.namespace("gen-argocd").await;
    for (generator_name, target, endpoint_key, argo_cd) in [
        (
            &name,
            json!({"selector": {}}),
            json!("admin.conf"),
            json!({}),
        ),
        (
            &capi,
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster"}),
            json!(null),
            json!(null),
        ),
    ] {
        let generator: KubeconfigGenerator = serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "KubeconfigGenerator",
            "metadata": {"name": generator_name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"environment": env}},
                "target": target,
                "user": {"fromDefinition": "metadata.name"},
                "controlPlaneEndpointFrom": endpoint_key,
                "validity": "1h",
                "policy": {"allowedClusterRoles": ["view"], "argoCD": {"namespace": argocd}},
                "authorization": {"clusterRoleBindings": {"clusterRoles": ["view"]}},
                "argoCD": argo_cd,
            },
        }))
        .unwrap();
        apply_generator(&admin, generator_name, &generator).await;
    }
    counts(&admin, &name, 2, 2, &[]).await;
    counts(&admin, &capi, 1, 1, &[]).await;
    for (tenant, kind, at) in tenants {
        let generator = if kind.kind == "Cluster" { &capi } else { &name };
        let kubeconfig_name = format!("{tenant}-{generator}");
        let kubeconfig = kubeconfig_of(&admin, &ns, &kubeconfig_name).await;
        assert!(
            kubeconfig.contains(&clusters[at].server),
            "{tenant}'s kubeconfig points at its cluster"
        );
        let client = client_from_kubeconfig(&kubeconfig).await;
        let (user, _) = whoami(client.clone()).await;
        assert_eq!(&user, tenant);
        // `view` cluster-wide, bound in the tenant's cluster and nowhere else.
        Api::<Namespace>::all(client)
            .list(&Default::default())
            .await
            .unwrap_or_else(|e| panic!("{tenant} views its cluster: {e}"));
        let uid = Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
            .get(&kubeconfig_name)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        assert_eq!(
            bound(clusters[at].admin().await, &uid).await,
            1,
            "{tenant}'s binding in its cluster"
        );
        assert_eq!(
            bound(admin.clone(), &uid).await,
            0,
            "nothing bound in the controller's cluster"
        );
        if kind.kind == TENANT_CONTROL_PLANE.kind {
            // Argo CD's code finds the tenant's cluster by its name and works with it there.
            let cluster = format!("{ns}.{tenant}");
            let seen = eventually(
                Duration::from_secs(30),
                &format!("Argo CD sees {cluster}"),
                || async { crate::argocd::argo_cd_sees(plane, &argocd, &cluster, &[]) },
            )
            .await;
            assert_eq!(seen["user"], *tenant, "{seen}");
            assert_eq!(seen["server"], clusters[at].server.trim_end_matches('/'));
        }
        let other = &clusters[1 - at];
        assert_eq!(
            bound(other.admin().await, &uid).await,
            0,
            "nothing of {tenant} in the other cluster"
        );
    }
    for generator in [&name, &capi] {
        Api::<KubeconfigGenerator>::all(admin.clone())
            .delete(generator, &Default::default())
            .await
            .unwrap();
    }
}

/// How many ClusterRoleBindings of the Kubeconfig `uid` a cluster holds.
async fn bound(client: Client, uid: &str) -> usize {
    let mine = kube::api::ListParams::default()
        .labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client)
        .list(&mine)
        .await
        .unwrap()
        .items
        .len()
}

async fn apply_generator(admin: &Client, name: &str, generator: &KubeconfigGenerator) {
    Api::<KubeconfigGenerator>::all(admin.clone())
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(generator),
        )
        .await
        .unwrap();
}
