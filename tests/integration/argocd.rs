//! Argo CD cluster Secrets against the real control plane, proven with Argo CD's own code:
//! `argocd-cluster` (`tests/tools/argocd`, built on Argo CD's published module) finds the
//! cluster the way Argo CD does (its settings manager's Secret informer, its cluster database,
//! the Cluster's REST config) and makes requests with it.

use std::{process::Command, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use kubeconfig_authority::api::{Authority, Kubeconfig, RENEW_ANNOTATION};
use serde_json::{Value, json};

use crate::{
    apply, eventually, plane, setup,
    support::{ControlPlane, tool_set},
    wait_ready,
};

/// What `argocd-cluster` saw: the server, the user, the credential ID, and each namespace's
/// ConfigMap listing ("ok" or the error). `Err`: it found no such cluster, or failed.
pub(crate) fn argo_cd_sees(
    plane: &ControlPlane,
    namespace: &str,
    cluster: &str,
    list_in: &[&str],
) -> Result<Value, String> {
    let tool = tool_set("argocd").join("argocd-cluster");
    let mut command = Command::new(tool);
    command
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig_path())
        .args(["--namespace", namespace, "--name", cluster]);
    for ns in list_in {
        command.args(["--list-in", ns]);
    }
    let out = command.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The `ArgoCD` condition of a Kubeconfig: (status, reason, message).
async fn argo_cd_condition(
    admin: &Client,
    ns: &str,
    name: &str,
) -> Option<(String, String, String)> {
    let kc = Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .get(name)
        .await
        .ok()?;
    kc.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ArgoCD")
        .map(|c| (c.status, c.reason, c.message))
}

async fn wait_argo_cd(admin: &Client, ns: &str, name: &str, status: &str) -> String {
    wait_argo_cd_within(admin, ns, name, status, Duration::from_secs(30)).await
}

async fn wait_argo_cd_within(
    admin: &Client,
    ns: &str,
    name: &str,
    status: &str,
    timeout: Duration,
) -> String {
    eventually(timeout, &format!("{ns}/{name} ArgoCD={status}"), || async {
        match argo_cd_condition(admin, ns, name).await {
            Some((s, _, message)) if s == status => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// A certificate registered with Argo CD: the cluster Secret Argo CD's code loads gives the
/// identity and exactly the rights granted; it follows a renewal; a second Kubeconfig of the
/// same server is refused (Argo CD would mix the two); the Secret goes with the Kubeconfig.
#[tokio::test]
async fn argo_cd_loads_the_registered_cluster_and_works_with_it() {
    let plane = plane();
    let (admin, ns) = setup("argocd", &plane.ca).await;
    let argocd = plane.namespace("argocd-home").await;
    let policy = json!({"spec": {"policy": {"argoCD": {"namespace": argocd, "allowedProjects": ["team-*"]}}}});
    Api::<Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::default(),
            &Patch::Merge(&policy),
        )
        .await
        .unwrap();
    apply(
        &admin,
        &ns,
        "deployer",
        json!({
            "authorityRef": {"name": "cluster-ca"},
            "username": "deployer",
            "validity": "1h",
            "secretRef": {"name": "deployer-kubeconfig"},
            "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]},
            "argoCD": {"namespaces": [ns], "project": "team-a"},
        }),
    )
    .await;
    let kc = wait_ready(&admin, &ns, "deployer").await;
    let message = wait_argo_cd(&admin, &ns, "deployer", "True").await;
    let secret_name = format!("{ns}.deployer");
    assert!(
        message.contains(&format!("{argocd}/{secret_name}")),
        "{message}"
    );
    let cluster = format!("{ns}.deployer");
    let seen = |expected: Option<String>| {
        let (argocd, cluster, ns) = (argocd.clone(), cluster.clone(), ns.clone());
        async move {
            eventually(
                Duration::from_secs(30),
                "Argo CD sees the current credential",
                || {
                    let (argocd, cluster, ns, expected) = (
                        argocd.clone(),
                        cluster.clone(),
                        ns.clone(),
                        expected.clone(),
                    );
                    async move {
                        let seen = argo_cd_sees(plane, &argocd, &cluster, &[&ns, "default"])?;
                        let id = seen["extra"]["authentication.kubernetes.io/credential-id"][0]
                            .as_str()
                            .map(str::to_owned);
                        if id == expected {
                            Ok(seen)
                        } else {
                            Err(format!("{seen}"))
                        }
                    }
                },
            )
            .await
        }
    };
    let first = seen(
        kc.status
            .as_ref()
            .and_then(|s| s.credential_id.as_ref().map(ToString::to_string)),
    )
    .await;
    assert_eq!(first["review"], "ok", "{first}");
    assert_eq!(first["user"], "deployer");
    assert_eq!(first["server"], plane.server.trim_end_matches('/'));
    let groups: Vec<&str> = first["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(groups.contains(&"kubeconfig:deployer"), "{groups:?}");
    assert_eq!(first["configMaps"][&ns], "ok", "view in its namespace");
    let refused = first["configMaps"]["default"].as_str().unwrap();
    assert!(
        refused.contains("forbidden"),
        "nothing elsewhere: {refused}"
    );
    let secret = Api::<Secret>::namespaced(admin.clone(), &argocd)
        .get(&secret_name)
        .await
        .unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["project"].0, b"team-a");
    assert_eq!(data["namespaces"].0, ns.as_bytes());

    // A forced renewal reaches Argo CD: the cluster Secret is rewritten with the new
    // certificate, which Argo CD's code then presents.
    let renew = json!({"metadata": {"annotations": {RENEW_ANNOTATION: "2026-11-30T10:00:00Z"}}});
    Api::<Kubeconfig>::namespaced(admin.clone(), &ns)
        .patch("deployer", &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .unwrap();
    let renewed = eventually(Duration::from_secs(30), "the renewal", || {
        let (admin, ns, before) = (admin.clone(), ns.clone(), kc.status.clone());
        async move {
            let kc = wait_ready(&admin, &ns, "deployer").await;
            let now = kc
                .status
                .as_ref()
                .and_then(|s| s.credential_id.as_ref().map(ToString::to_string));
            if now.is_some()
                && now
                    != before
                        .and_then(|s| s.credential_id)
                        .map(|id| id.to_string())
            {
                Ok(now)
            } else {
                Err("not renewed yet".to_string())
            }
        }
    })
    .await;
    let second = seen(renewed).await;
    assert_eq!(second["user"], "deployer");

    // Another Kubeconfig for the same server: refused, nothing written (Argo CD tells
    // clusters apart by server and would mix the two credentials).
    apply(
        &admin,
        &ns,
        "intruder",
        json!({
            "authorityRef": {"name": "cluster-ca"},
            "username": "intruder",
            "validity": "1h",
            "secretRef": {"name": "intruder-kubeconfig"},
            "argoCD": {"name": cluster},
        }),
    )
    .await;
    wait_ready(&admin, &ns, "intruder").await;
    let refusal = wait_argo_cd(&admin, &ns, "intruder", "False").await;
    assert!(refusal.contains("registers the server"), "{refusal}");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &argocd);
    assert!(
        secrets
            .get_opt(&format!("{ns}.intruder"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        argo_cd_sees(plane, &argocd, &cluster, &[]).unwrap()["user"],
        "deployer",
        "Argo CD still sees the one cluster"
    );

    // The Kubeconfig goes: its cluster Secret goes, and Argo CD finds no such cluster.
    crate::delete_and_wait(&admin, &ns, "deployer").await;
    eventually(
        Duration::from_secs(30),
        "the cluster Secret removed",
        || {
            let secrets = secrets.clone();
            let name = secret_name.clone();
            async move {
                match secrets.get_opt(&name).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(_) => Err("still there".to_string()),
                }
            }
        },
    )
    .await;
    let gone = argo_cd_sees(plane, &argocd, &cluster, &[]).unwrap_err();
    assert!(gone.contains("0 clusters named"), "{gone}");
}

/// As a limited team member (a client certificate with the project's requester role and the
/// right to impersonate only herself): she cannot write Secrets where Argo CD reads them, and
/// the controller registers hers only where the authority's policy lets it, never in an
/// unlisted project, and never over a cluster an admin registered by hand.
#[tokio::test]
async fn a_team_member_registers_only_where_the_authority_allows() {
    let plane = plane();
    let (admin, ns) = setup("argocd-team", &plane.ca).await;
    let argocd = plane.namespace("argocd-team-home").await;
    let tina = crate::security::team_member(&admin, &ns, "tina", &["tina"]).await;
    let secrets_there = Api::<Secret>::namespaced(tina.clone(), &argocd);
    assert_eq!(
        crate::code(secrets_there.list(&Default::default()).await),
        403,
        "she cannot reach them herself"
    );
    let spec = |name: &str, project: &str| {
        json!({
            "authorityRef": {"name": "cluster-ca"}, "username": "tina", "validity": "1h",
            "secretRef": {"name": format!("{name}-kubeconfig")},
            "argoCD": {"name": "tina", "project": project},
        })
    };
    let ours = |name: &str| {
        let uid_of = Api::<Kubeconfig>::namespaced(admin.clone(), &ns);
        let secrets = Api::<Secret>::namespaced(admin.clone(), &argocd);
        let name = name.to_string();
        async move {
            let uid = uid_of.get(&name).await.unwrap().metadata.uid.unwrap();
            let mine = kube::api::ListParams::default()
                .labels(&format!("kubeconfig-authority.dev/kubeconfig-uid={uid}"));
            secrets.list(&mine).await.unwrap().items.len()
        }
    };

    // The authority says nothing of Argo CD: the credential is issued, not registered.
    crate::security::create_as(&tina, &ns, "tina", spec("tina", "team-a")).await;
    wait_ready(&admin, &ns, "tina").await;
    let refused = wait_argo_cd(&admin, &ns, "tina", "False").await;
    assert!(refused.contains("policy.argoCD.namespace"), "{refused}");
    assert_eq!(ours("tina").await, 0);

    // The admin allows team projects in the Argo CD namespace; a platform project stays out.
    let policy = json!({"spec": {"policy": {"argoCD": {"namespace": argocd, "allowedProjects": ["team-*"]}}}});
    Api::<Authority>::namespaced(admin.clone(), &ns)
        .patch(
            "cluster-ca",
            &PatchParams::default(),
            &Patch::Merge(&policy),
        )
        .await
        .unwrap();
    crate::security::create_as(
        &tina,
        &ns,
        "tina-platform",
        spec("tina-platform", "platform"),
    )
    .await;
    wait_ready(&admin, &ns, "tina-platform").await;
    let refused = wait_argo_cd(&admin, &ns, "tina-platform", "False").await;
    assert!(refused.contains("allowedProjects"), "{refused}");
    assert_eq!(ours("tina-platform").await, 0);

    // A cluster an admin registered by hand for the same server is never taken over.
    let by_hand: Secret = serde_json::from_value(json!({
        "metadata": {"name": "by-hand", "labels": {"argocd.argoproj.io/secret-type": "cluster"}},
        "stringData": {"name": "production", "server": plane.server, "config": "{}"},
    }))
    .unwrap();
    let secrets = Api::<Secret>::namespaced(admin.clone(), &argocd);
    secrets.create(&Default::default(), &by_hand).await.unwrap();
    crate::delete_and_wait(&admin, &ns, "tina").await;
    crate::security::create_as(&tina, &ns, "tina-team", spec("tina-team", "team-a")).await;
    wait_ready(&admin, &ns, "tina-team").await;
    let refused = wait_argo_cd(&admin, &ns, "tina-team", "False").await;
    assert!(refused.contains("registers the server"), "{refused}");
    let untouched = secrets.get("by-hand").await.unwrap();
    assert_eq!(untouched.data.unwrap()["name"].0, b"production");
    assert_eq!(ours("tina-team").await, 0);

    // The admin's registration goes: hers follows (a refused registration is asked again).
    secrets
        .delete("by-hand", &Default::default())
        .await
        .unwrap();
    wait_argo_cd_within(&admin, &ns, "tina-team", "True", Duration::from_secs(60)).await;
    assert_eq!(ours("tina-team").await, 1);
}
