//! Flux for real: source-controller and kustomize-controller (built from their Go modules by
//! `tests/tools/build.sh flux`, their CRDs from their modules' files) run as processes against
//! the test control plane, a tenant's Git repository is served by Git's own HTTP backend, and
//! a Kustomization applies it with the rotating token kubeconfig this project issues.
//!
//! Capsule and capsule-proxy are not part of it: the Go module proxy refuses every version of
//! `github.com/projectcapsule/capsule`, `github.com/projectcapsule/capsule-proxy` and their
//! older `github.com/clastix/...` paths (403, "not available"), so the tenant's kubeconfig
//! points at the API server directly.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use kubeconfig_authority::api::{Authority, Kubeconfig};
use serde_json::json;

use crate::{
    apply, apply_crds, cluster_role, delete_and_wait, eventually,
    gitops::{token_id, token_setup},
    grant_controller, plane,
    support::{ControlPlane, Process, free_port, git::GitServer, tool_set},
    wait_ready,
};

/// Flux's two controllers, stopped when dropped.
struct Flux {
    _processes: Vec<Process>,
}

impl Flux {
    async fn start(plane: &ControlPlane, admin: &Client) -> Flux {
        let tools = tool_set("flux");
        let crds = std::fs::read_dir(tools.join("crds"))
            .unwrap()
            .map(|entry| {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                serde_yaml::from_str::<CustomResourceDefinition>(&text).unwrap()
            })
            .collect();
        apply_crds(admin, crds).await;
        let dir = plane.dir.path().join("flux");
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let env = [
            (
                "KUBECONFIG",
                plane.admin_kubeconfig_path().display().to_string(),
            ),
            ("RUNTIME_NAMESPACE", "flux-system".to_string()),
        ];
        let address = || format!("127.0.0.1:{}", free_port().unwrap());
        let storage = address();
        let source = Process::spawn(
            &tools.join("source-controller"),
            &[
                format!("--storage-path={}", dir.join("storage").display()),
                format!("--storage-addr={storage}"),
                format!("--storage-adv-addr={storage}"),
                "--artifact-retention-records=10".into(),
                format!("--metrics-addr={}", address()),
                format!("--health-addr={}", address()),
                "--enable-leader-election=false".into(),
                "--events-addr=".into(),
            ],
            &env,
            &dir.join("source-controller.log"),
        )
        .unwrap();
        let kustomize = Process::spawn(
            &tools.join("kustomize-controller"),
            &[
                format!("--metrics-addr={}", address()),
                format!("--health-addr={}", address()),
                "--enable-leader-election=false".into(),
                "--events-addr=".into(),
            ],
            &env,
            &dir.join("kustomize-controller.log"),
        )
        .unwrap();
        Flux {
            _processes: vec![source, kustomize],
        }
    }
}

fn flux_api(
    admin: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Api::namespaced_with(admin.clone(), ns, &ApiResource::from_gvk(&gvk))
}

fn kustomizations(admin: &Client, ns: &str) -> Api<DynamicObject> {
    flux_api(
        admin,
        ns,
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
    )
}

/// A Kustomization of `path` in the tenant's GitRepository, applied with the kubeconfig of
/// Secret `secret` (no key: Flux reads `value`), impersonating `service_account` if set.
async fn kustomization(
    admin: &Client,
    ns: &str,
    name: &str,
    source: (&str, &str),
    path: &str,
    secret: &str,
    service_account: Option<&str>,
) {
    let mut spec = json!({
        "interval": "10s",
        "retryInterval": "5s",
        "timeout": "30s",
        "path": path,
        "prune": true,
        "sourceRef": {"kind": "GitRepository", "name": source.1, "namespace": source.0},
        "kubeConfig": {"secretRef": {"name": secret}},
    });
    if let Some(sa) = service_account {
        spec["serviceAccountName"] = sa.into();
    }
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    kustomizations(admin, ns)
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
}

/// The Ready condition of a Flux object: (status, reason, message).
fn ready(object: &DynamicObject) -> Option<(String, String, String)> {
    let conditions = object.data["status"]["conditions"].as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
    let text = |k: &str| ready[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

/// Waits until a Kustomization is Ready=`status` with a message that contains one of `any`.
async fn wait_kustomization(
    admin: &Client,
    ns: &str,
    name: &str,
    status: &str,
    any: &[&str],
    timeout: Duration,
) -> String {
    let api = kustomizations(admin, ns);
    eventually(
        timeout,
        &format!("Kustomization {ns}/{name} Ready={status} ({any:?})"),
        || {
            let api = api.clone();
            async move {
                let object = api.get(name).await.map_err(|e| e.to_string())?;
                match ready(&object) {
                    Some((s, _, message))
                        if s == status && any.iter().any(|a| message.contains(a)) =>
                    {
                        Ok(message)
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

fn config_map(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n"
    )
}

async fn value_of(admin: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(admin.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data)
        .and_then(|d| d.get("value").cloned())
}

async fn wait_value(admin: &Client, ns: &str, name: &str, value: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("ConfigMap {ns}/{name} = {value}"),
        || async {
            match value_of(admin, ns, name).await {
                Some(v) if v == value => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// The tenant's story with a real Flux: a token kubeconfig for the ServiceAccount `flux`
/// (rotating every minute or so), used by a Kustomization that also impersonates that account
/// (the self-impersonation Role the Kubeconfig asks for), applies the tenant's repository
/// where it is allowed and is refused where it is not, keeps applying through rotations with
/// no failed reconcile, works from the copy in another tenant namespace, and fails as
/// unauthorized once the Kubeconfig is gone (a saved copy of the kubeconfig included).
#[tokio::test]
async fn flux_applies_a_tenant_s_repository_with_a_rotating_token_kubeconfig() {
    let plane = plane();
    let (admin, system) = token_setup("oil-system").await;
    let apps = plane.namespace("oil-dev").await;
    let copies = plane.namespace("oil-copy").await;
    let tenant = format!("oil-{}", &system[system.len() - 8..]);
    Api::<Namespace>::all(admin.clone())
        .patch(
            &copies,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"capsule.clastix.io/tenant": tenant}}})),
        )
        .await
        .unwrap();
    let policy = json!({"spec": {"policy": {"distributionNamespaceSelector": {"matchLabels": {"capsule.clastix.io/tenant": tenant}}}}});
    Api::<Authority>::namespaced(admin.clone(), &system)
        .patch("tokens", &PatchParams::default(), &Patch::Merge(&policy))
        .await
        .unwrap();
    // The tenant's rights in its two namespaces: ConfigMaps, and Secrets (the copy's namespace
    // too: a copy goes only where its identity may write it).
    let role = format!("flux-tenant-{tenant}");
    let verbs = json!([
        "get", "list", "watch", "create", "update", "patch", "delete"
    ]);
    cluster_role(
        &admin,
        &role,
        json!([{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": verbs}]),
    )
    .await;
    // The controller may bind it, as the README says an operator grants it (`bind` on the
    // roles its authorities allow).
    grant_controller(
        &admin,
        &format!("{role}-bind"),
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
            "verbs": ["bind"], "resourceNames": [role]}]),
    )
    .await;
    apply(
        &admin,
        &system,
        "flux",
        json!({
            "authorityRef": {"name": "tokens"},
            "serviceAccountRef": {"name": "flux", "impersonateSelf": true},
            "validity": "10m",
            "renewBefore": "9m40s",
            "secretRef": {"name": "flux-kubeconfig"},
            "authorization": {"roleBindings": [
                {"namespace": apps, "clusterRole": role},
                {"namespace": copies, "clusterRole": role},
            ]},
            "distribution": {"namespaceSelector": {"matchLabels": {"capsule.clastix.io/tenant": tenant}}},
        }),
    )
    .await;
    let issued = wait_ready(&admin, &system, "flux").await;

    let repositories = tempfile::tempdir().unwrap();
    let git = GitServer::start(repositories.path()).unwrap();
    let url = git
        .create(
            "oil",
            &[
                ("tenant/hello.yaml", &config_map(&apps, "hello", "1")),
                (
                    "elsewhere/intruder.yaml",
                    &config_map("default", &format!("intruder-{tenant}"), "1"),
                ),
                ("copy/hello.yaml", &config_map(&copies, "hello-copy", "1")),
                ("saved/hello.yaml", &config_map(&apps, "hello-saved", "1")),
            ],
        )
        .unwrap();
    let _flux = Flux::start(plane, &admin).await;
    let repository: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "oil"},
        "spec": {"url": url, "interval": "5s", "ref": {"branch": "main"}, "timeout": "20s"},
    }))
    .unwrap();
    flux_api(
        &admin,
        &system,
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
    )
    .patch(
        "oil",
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&repository),
    )
    .await
    .unwrap();
    let source = (system.as_str(), "oil");
    kustomization(
        &admin,
        &system,
        "tenant",
        source,
        "./tenant",
        "flux-kubeconfig",
        Some("flux"),
    )
    .await;
    kustomization(
        &admin,
        &system,
        "elsewhere",
        source,
        "./elsewhere",
        "flux-kubeconfig",
        Some("flux"),
    )
    .await;

    // Every Ready=False of the tenant's Kustomization from now on is a failed reconcile (but
    // see ArtifactFailed below).
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let watching = {
        let (failures, api) = (failures.clone(), kustomizations(&admin, &system));
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=tenant");
            let mut events = std::pin::pin!(watcher(api, config).applied_objects());
            while let Some(Ok(object)) = events.next().await {
                // ArtifactFailed is the hand-over of the source's tarball between Flux's two
                // controllers (a fetch racing the source's own cleanup), before any request
                // to the cluster; everything else is the cluster's answer to the kubeconfig.
                if let Some((status, reason, message)) = ready(&object)
                    && status == "False"
                    && reason != "ArtifactFailed"
                {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{reason}: {message}"));
                }
            }
        })
    };
    let message = wait_kustomization(
        &admin,
        &system,
        "tenant",
        "True",
        &["Applied revision"],
        Duration::from_secs(90),
    )
    .await;
    assert!(message.contains("main@sha1:"), "{message}");
    wait_value(&admin, &apps, "hello", "1").await;
    // Where the tenant may not write, Flux is refused, as the tenant's ServiceAccount.
    let refused = wait_kustomization(
        &admin,
        &system,
        "elsewhere",
        "False",
        &["forbidden"],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        refused.contains(&format!("system:serviceaccount:{system}:flux")),
        "{refused}"
    );
    assert!(
        value_of(&admin, "default", &format!("intruder-{tenant}"))
            .await
            .is_none()
    );

    // The copy in the tenant's other namespace works for a Kustomization there (as the
    // kubeconfig's own identity).
    kustomization(
        &admin,
        &copies,
        "copy",
        source,
        "./copy",
        "flux-kubeconfig",
        None,
    )
    .await;
    wait_kustomization(
        &admin,
        &copies,
        "copy",
        "True",
        &["Applied revision"],
        Duration::from_secs(60),
    )
    .await;
    wait_value(&admin, &copies, "hello-copy", "1").await;

    // Rotations happen while Flux works: each new commit is applied with whatever token the
    // Secret holds then, and nothing fails.
    let rotations = AtomicUsize::new(0);
    let mut last_token = token_id(&issued);
    for round in 2..=3 {
        let rotated = eventually(Duration::from_secs(90), "the token rotated", || {
            let (admin, system, last) = (admin.clone(), system.clone(), last_token.clone());
            async move {
                let kc = wait_ready(&admin, &system, "flux").await;
                let id = token_id(&kc);
                if id != last {
                    Ok(id)
                } else {
                    Err("not yet".to_string())
                }
            }
        })
        .await;
        rotations.fetch_add(1, Ordering::Relaxed);
        last_token = rotated;
        let value = round.to_string();
        git.commit(
            "oil",
            &[("tenant/hello.yaml", &config_map(&apps, "hello", &value))],
            &format!("round {round}"),
        )
        .unwrap();
        wait_value(&admin, &apps, "hello", &value).await;
    }
    assert_eq!(rotations.load(Ordering::Relaxed), 2);
    let seen = failures.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "the tenant's Kustomization failed: {seen:?}"
    );

    // A copy of the kubeconfig saved elsewhere works while the Kubeconfig lives...
    let current: Secret = Api::<Secret>::namespaced(admin.clone(), &system)
        .get("flux-kubeconfig")
        .await
        .unwrap();
    let saved: Secret = serde_json::from_value(json!({
        "metadata": {"name": "saved-kubeconfig"},
        "data": current.data.unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &system)
        .patch(
            "saved-kubeconfig",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&saved),
        )
        .await
        .unwrap();
    kustomization(
        &admin,
        &system,
        "saved",
        source,
        "./saved",
        "saved-kubeconfig",
        None,
    )
    .await;
    wait_kustomization(
        &admin,
        &system,
        "saved",
        "True",
        &["Applied revision"],
        Duration::from_secs(60),
    )
    .await;
    watching.abort();

    // ...and not once it is deleted: its token was bound to the Secret that goes with it.
    delete_and_wait(&admin, &system, "flux").await;
    let deleted = std::time::Instant::now();
    git.commit(
        "oil",
        &[("saved/hello.yaml", &config_map(&apps, "hello-saved", "2"))],
        "after",
    )
    .unwrap();
    let unauthorized = wait_kustomization(
        &admin,
        &system,
        "saved",
        "False",
        &["Unauthorized", "provide credentials"],
        Duration::from_secs(60),
    )
    .await;
    println!(
        "the saved kubeconfig {:?} after the deletion: {unauthorized}",
        deleted.elapsed()
    );
    assert_eq!(
        value_of(&admin, &apps, "hello-saved").await.as_deref(),
        Some("1")
    );
    let kubeconfigs = Api::<Kubeconfig>::namespaced(admin.clone(), &system);
    assert!(kubeconfigs.get_opt("flux").await.unwrap().is_none());
}
