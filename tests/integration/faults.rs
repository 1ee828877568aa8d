//! The faults every cluster has, on a control plane of its own: kube-apiserver stopped
//! (gracefully and by SIGKILL) and etcd stopped, each for 15 s during a burst of creations, and
//! an API server that refuses connections for 70 s, during which the leader, unable to renew
//! its Lease, stops leading before it expires, and no replica leads until the API server is
//! back; then a replica without leader election, whose watches stall, says so. The controllers
//! are never restarted. A watch that fails for good delays no reconcile, and what changed while
//! the watches were away is seen when they list again.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use kubeconfig_authority::api::{ClusterAuthority, Kubeconfig};
use serde_json::json;

use crate::{
    eventually, secret,
    support::{ControlPlane, free_port, http_get},
};

const CA_NAMESPACE: &str = "kubeconfig-authority-system";

async fn ready(admin: &Client, ns: &str, name: &str) -> bool {
    Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|kc| kc.status)
        .is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Creates `names` one after the other, retrying each while the API server is away.
async fn create_all(admin: Client, ns: String, names: Vec<String>) {
    let api = Api::<Kubeconfig>::namespaced(admin, &ns);
    for name in names {
        let kc: Kubeconfig = serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": name},
            "spec": {"username": name, "validity": "1h", "secretRef": {"name": name}}}))
        .unwrap();
        loop {
            match api.create(&PostParams::default(), &kc).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates the Kubeconfig `name` (retrying while the API server is away) and waits up to
/// `within` for it to be Ready.
async fn issued_within(admin: &Client, ns: &str, name: &str, within: Duration, what: &str) {
    let start = std::time::Instant::now();
    create_all(admin.clone(), ns.to_string(), vec![name.to_string()]).await;
    ready_within(admin, ns, name, within, what).await;
    println!("{what}: Ready {:?} after its creation", start.elapsed());
}

/// Waits up to `within` for the Kubeconfig `name` to be Ready.
async fn ready_within(admin: &Client, ns: &str, name: &str, within: Duration, what: &str) {
    eventually(within, what, || async {
        ready(admin, ns, name)
            .await
            .then_some(())
            .ok_or_else(|| "not Ready".to_string())
    })
    .await;
}

/// Waits up to `within` for the Secret `name`, deleted, to be there again.
async fn restored_within(admin: &Client, ns: &str, name: &str, within: Duration, what: &str) {
    eventually(within, what, || async {
        secret(admin, ns, name)
            .await
            .map(drop)
            .ok_or_else(|| "still deleted".to_string())
    })
    .await;
}

/// Waits up to 30 s for the replica whose health is on `port` to be ready, saying `role`.
async fn ready_as(port: u16, role: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        match http_get(port, "/readyz").await {
            Some((status, body)) if status.contains("200") && body.contains(role) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// One outage: `stop` happens while `count` Kubeconfigs are being created, lasts 15 s, and
/// then every one of them is Ready within 60 s of the return, a deleted Secret is repaired and
/// a new Kubeconfig is issued.
async fn outage(
    plane: &ControlPlane,
    admin: &Client,
    port: u16,
    label: &str,
    component: &str,
    kill: bool,
) {
    let ns = plane.namespace(label).await;
    let names: Vec<String> = (0..200).map(|i| format!("{label}-{i}")).collect();
    let creating = tokio::spawn(create_all(admin.clone(), ns.clone(), names.clone()));
    // Let a quarter or so be created first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.stop_component(component, kill);
    tokio::time::sleep(Duration::from_secs(15)).await;
    plane.start_component(component);
    let back = std::time::Instant::now();
    creating.await.unwrap();
    eventually(
        Duration::from_secs(60),
        "every Kubeconfig Ready after the outage",
        || async {
            let mut missing = Vec::new();
            for name in &names {
                if !ready(admin, &ns, name).await {
                    missing.push(name.clone());
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                // What the controller is doing meanwhile, for the failure message.
                let in_flight = match http_get(port, "/metrics").await {
                    Some((_, text)) => metric(&text, "kubeconfig_authority_reconciles_in_flight"),
                    None => -1.0,
                };
                Err(format!(
                    "{} not Ready, e.g. {:?}; reconciles in flight: {in_flight}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ))
            }
        },
    )
    .await;
    println!(
        "{label}: all 200 Ready {:?} after {component} returned",
        back.elapsed()
    );
    // Repairs work: a deleted Secret comes back.
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .delete(&names[0], &DeleteParams::default())
        .await
        .unwrap();
    restored_within(
        admin,
        &ns,
        &names[0],
        Duration::from_secs(10),
        "the deleted Secret restored",
    )
    .await;
    // A new Kubeconfig is issued.
    let late = format!("{label}-late");
    let within = Duration::from_secs(10);
    issued_within(
        admin,
        &ns,
        &late,
        within,
        "a Kubeconfig created after the outage",
    )
    .await;
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    for reason in ["Renewed", "Reissued"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("kubeconfig_authority_issued_total{{reason=\"{reason}\"}}")
            ),
            0.0,
            "nothing issued twice: {reason}"
        );
    }
}

#[tokio::test]
async fn api_server_and_etcd_restarts_are_survived_without_a_controller_restart() {
    let plane = ControlPlane::start_apart();
    plane.install_crds().await;
    plane.start_controller_manager();
    plane.install_controller_rbac().await;
    let admin = plane.admin().await;
    // The CA key where no requester reads it, as the README sets it up.
    let ca: Secret = serde_json::from_value(json!({"metadata": {"name": "cluster-ca"},
        "stringData": {"ca.crt": plane.ca.cert_pem, "ca.key": plane.ca.key_pem}}))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), CA_NAMESPACE)
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();
    let authority: ClusterAuthority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "ClusterAuthority", "metadata": {"name": "cluster-ca"},
        "spec": {"server": plane.server, "signer": {"caSecretRef": {"name": "cluster-ca", "namespace": CA_NAMESPACE}}}}))
    .unwrap();
    Api::<ClusterAuthority>::all(admin.clone())
        .create(&PostParams::default(), &authority)
        .await
        .unwrap();
    let port = free_port().unwrap();
    let mut controller = spawn(&plane, port, "faults", &[]);
    ready_as(port, "leader", "the controller leads").await;

    outage(&plane, &admin, port, "graceful", "kube-apiserver", false).await;
    outage(&plane, &admin, port, "killed", "kube-apiserver", true).await;
    outage(&plane, &admin, port, "etcd", "etcd", true).await;

    // A standby replica, then the API server refused for 70 s: the leader cannot renew its
    // Lease and stops leading before the Lease expires; nobody leads during the outage, and one
    // replica leads once the API server is back. Both processes survive.
    let standby_port = free_port().unwrap();
    let mut standby = spawn(&plane, standby_port, "standby", &[]);
    ready_as(standby_port, "follower", "the standby follows").await;
    // Leading, its caches synced or not.
    let leads = |port: u16| async move {
        http_get(port, "/readyz")
            .await
            .is_some_and(|(_, body)| body.starts_with("ok: leader") || body.starts_with("leader,"))
    };
    // From the SIGTERM: kube-apiserver takes seconds to shut down, and stops answering
    // meanwhile.
    let stopped = std::time::Instant::now();
    plane.stop_component("kube-apiserver", false);
    let mut stopped_leading = None;
    while stopped.elapsed() < Duration::from_secs(70) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (first, second) = (leads(port).await, leads(standby_port).await);
        assert!(!second, "the standby leads without an API server");
        if !first {
            stopped_leading.get_or_insert(stopped.elapsed());
        }
        if let Some(at) = stopped_leading {
            assert!(
                !first,
                "the first replica leads again without an API server ({at:?})"
            );
        }
    }
    let stopped_leading = stopped_leading.expect("the leader stopped leading during the outage");
    println!("the leader stopped leading {stopped_leading:?} after the API server stopped");
    assert!(
        stopped_leading < Duration::from_secs(20),
        "up to 10 s for the API server to stop, and a Lease of 10 s: {stopped_leading:?}"
    );
    plane.start_component("kube-apiserver");
    eventually(Duration::from_secs(60), "one replica leads", || async {
        match (leads(port).await, leads(standby_port).await) {
            (true, false) | (false, true) => Ok(()),
            other => Err(format!("leading: {other:?}")),
        }
    })
    .await;
    let ns = plane.namespace("after").await;
    // Each watch lists again within its own backoff (at most 5 s) once the API server
    // answers. (With kube-runtime's pause of a controller's triggers after errors, up to 30 s,
    // this failed.)
    let within = Duration::from_secs(15);
    issued_within(
        &admin,
        &ns,
        "after",
        within,
        "a Kubeconfig after the long outage",
    )
    .await;
    for (name, process) in [("first", &mut controller), ("standby", &mut standby)] {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "the {name} controller process kept running"
        );
        process.stop(Duration::from_secs(10));
    }

    // Without leader election nothing steps down: a watch failing for 60 s counts as stalled,
    // and `/readyz` and the metric say which and why.
    let port = free_port().unwrap();
    let mut alone = spawn(&plane, port, "alone", &["--leader-elect=false"]);
    ready_as(port, "", "the replica is ready").await;
    plane.stop_component("kube-apiserver", false);
    let (mut said_stalled, mut counted_stalled) = (None, 0.0f64);
    // A watch counts as failing from its first error, which can come seconds after the stop:
    // up to 90 s of outage, until both the probe and the metric have said so.
    for _ in 0..90 {
        if said_stalled.is_some() && counted_stalled >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((status, body)) = http_get(port, "/readyz").await
            && status.contains("503")
            && body.contains("without progress")
        {
            said_stalled.get_or_insert(body);
        }
        if let Some((_, text)) = http_get(port, "/metrics").await {
            counted_stalled =
                counted_stalled.max(metric(&text, "kubeconfig_authority_watches_stalled"));
        }
    }
    plane.start_component("kube-apiserver");
    let said_stalled = said_stalled.expect("/readyz said the watches stalled during the outage");
    assert!(
        said_stalled.contains("failing for 60s")
            && (said_stalled.contains("Connect") || said_stalled.contains("connection")),
        "names the watches and why: {said_stalled}"
    );
    assert!(counted_stalled >= 1.0, "the metric counted stalled watches");
    // As after the long outage above.
    let within = Duration::from_secs(15);
    issued_within(
        &admin,
        &ns,
        "after-alone",
        within,
        "a Kubeconfig after the stall",
    )
    .await;
    assert!(
        alone.child.try_wait().unwrap().is_none(),
        "the replica without leader election kept running"
    );
    alone.stop(Duration::from_secs(10));
}

/// A controller of the faults test's plane, as `name`, with its health on `port`.
fn spawn(plane: &ControlPlane, port: u16, name: &str, extra: &[&str]) -> crate::support::Process {
    let mut args = vec!["--default-authority", "ClusterAuthority/cluster-ca"];
    args.extend_from_slice(extra);
    crate::replica(plane, name, port, &args)
}

/// A watch that fails for good (here: the controller's right to list ConfigMaps taken away)
/// delays no reconcile. kube-runtime pauses all of a controller's triggers after an error of
/// any one of them (0.8 s doubling to 30 s); with that pause, a minute of one failing watch made
/// a new Kubeconfig wait up to 30 s (and after an outage, no watch listed again for as long).
#[tokio::test]
async fn a_watch_that_keeps_failing_delays_no_reconcile() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let plane = ControlPlane::start_apart();
    plane.install_crds().await;
    plane.install_controller_rbac().await;
    let admin = plane.admin().await;
    let roles = Api::<ClusterRole>::all(admin.clone());
    let mut role = roles.get("kubeconfig-authority").await.unwrap();
    let rules = role.rules.as_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| {
        !r.resources
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r == "configmaps"))
    });
    assert_eq!(rules.len(), before - 1, "one rule names ConfigMaps");
    roles
        .replace("kubeconfig-authority", &PostParams::default(), &role)
        .await
        .unwrap();
    let (_, ns) = crate::setup_on(&plane, "failing", &plane.ca).await;
    let port = free_port().unwrap();
    let controller = crate::replica(&plane, "failing", port, &["--leader-elect=false"]);
    plane.adopt(controller);
    ready_as(port, "", "the controller is ready").await;
    // Long enough for the pause to have grown to its 30 s (watch errors every 5 s), short of
    // the 60 s after which the watch counts as stalled.
    tokio::time::sleep(Duration::from_secs(35)).await;
    for i in 0..3 {
        let name = format!("while-failing-{i}");
        crate::ready_beside(&admin, &ns, &name, "the failing ConfigMaps watch").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What changed while the controller's watches were away is seen when they list again: with
/// its rights taken and the API server restarted, every watch breaks and fails to list; a
/// Kubeconfig created and a Secret deleted meanwhile are issued and repaired once the rights
/// are back. A relist's objects trigger reconciles once the cache holds them, and what the
/// relist no longer finds (no watch event ever says it went) triggers too.
#[tokio::test]
async fn what_changed_while_the_watches_were_away_is_seen_when_they_list_again() {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let plane = ControlPlane::start_apart();
    plane.install_crds().await;
    plane.install_controller_rbac().await;
    let (admin, ns) = crate::setup_on(&plane, "away", &plane.ca).await;
    let port = free_port().unwrap();
    let controller = crate::replica(&plane, "away", port, &["--leader-elect=false"]);
    plane.adopt(controller);
    ready_as(port, "", "the controller is ready").await;
    crate::ready_beside(&admin, &ns, "before", "nothing").await;

    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete("kubeconfig-authority", &DeleteParams::default())
        .await
        .unwrap();
    plane.stop_component("kube-apiserver", false);
    plane.start_component("kube-apiserver");
    let admin = plane.admin().await;
    crate::apply(&admin, &ns, "during", crate::spec("during", json!({}))).await;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .delete("before-kubeconfig", &DeleteParams::default())
        .await
        .unwrap();
    // Every watch has failed to list at least once more (they retry within 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!ready(&admin, &ns, "during").await, "issued without rights");
    plane
        .apply_manifests("config/rbac/cluster_role_binding.yaml")
        .await;
    let back = std::time::Instant::now();
    // Within a watch's longest backoff (5 s) and an issuance.
    let within = Duration::from_secs(10);
    let what = "the Kubeconfig created meanwhile Ready";
    ready_within(&admin, &ns, "during", within, what).await;
    let what = "the Secret deleted meanwhile repaired";
    restored_within(&admin, &ns, "before-kubeconfig", within, what).await;
    println!("both {:?} after the rights came back", back.elapsed());
}
