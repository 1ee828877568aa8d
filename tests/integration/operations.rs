//! Operations against the real control plane: two replicas with leader election (a control
//! plane of their own, so that the shared controller is not disturbed), health and metrics, and
//! every manifest in `config/` applied with a server-side dry run.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::{Authority, Kubeconfig};
use serde_json::json;

use crate::{
    eventually, plane, replica,
    support::{ControlPlane, Process, free_port, http_get as get},
    wait_ready,
};

async fn role(port: u16) -> String {
    match get(port, "/readyz").await {
        Some((status, body)) if status.contains("200") => body,
        other => format!("{other:?}"),
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A control plane of its own (so that the shared controller is not disturbed) with the
/// controller's CRDs and RBAC, and a namespace with an Authority `ca`: its admin client and
/// the namespace.
async fn ha_plane() -> (ControlPlane, Client, String) {
    let plane = ControlPlane::start_apart();
    plane.install_crds().await;
    plane.install_controller_rbac().await;
    let admin = plane.admin().await;
    let ns = plane.namespace("ha").await;
    let ca: Secret = serde_json::from_value(json!({"metadata": {"name": "ca"},
        "stringData": {"ca.crt": plane.ca.cert_pem, "ca.key": plane.ca.key_pem}}))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();
    let authority: Authority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority", "metadata": {"name": "ca"},
        "spec": {"server": plane.server, "signer": {"caSecretRef": {"name": "ca"}}}}))
    .unwrap();
    Api::<Authority>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &authority)
        .await
        .unwrap();
    (plane, admin, ns)
}

/// Creates the Kubeconfig `name` of the Authority `ca`, into Secret `name`.
async fn create(admin: &Client, ns: &str, name: &str) {
    let kc: Kubeconfig = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig", "metadata": {"name": name},
        "spec": {"authorityRef": {"name": "ca"}, "username": name, "validity": "1h", "secretRef": {"name": name}}}))
    .unwrap();
    Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &kc)
        .await
        .unwrap();
}

/// Replica a (leading) and replica b (following) of the controller, and their health ports.
async fn two_replicas(plane: &ControlPlane) -> ((Process, u16), (Process, u16)) {
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let a = replica(plane, "replica-a", port_a, &[]);
    eventually(Duration::from_secs(20), "replica a leads", || async {
        let r = role(port_a).await;
        if r.contains("leader") { Ok(()) } else { Err(r) }
    })
    .await;
    let b = replica(plane, "replica-b", port_b, &[]);
    eventually(Duration::from_secs(20), "replica b follows", || async {
        let r = role(port_b).await;
        if r.contains("follower") {
            Ok(())
        } else {
            Err(r)
        }
    })
    .await;
    ((a, port_a), (b, port_b))
}

#[tokio::test]
async fn a_second_replica_takes_over_within_fifteen_seconds_without_double_issuance() {
    let (plane, admin, ns) = ha_plane().await;
    let ((mut a, port_a), (mut b, port_b)) = two_replicas(&plane).await;

    create(&admin, &ns, "before").await;
    let before = wait_ready(&admin, &ns, "before").await;
    let serial = before.status.as_ref().unwrap().serial_number.clone();
    let secret_version = Api::<Secret>::namespaced(admin.clone(), &ns)
        .get("before")
        .await
        .unwrap()
        .resource_version();
    let (_, metrics) = get(port_a, "/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "kubeconfig_authority_leader "), Some(1.0));
    assert!(
        metrics.contains(&format!(
            "kubeconfig_authority_expiry_seconds{{namespace=\"{ns}\",name=\"before\"}}"
        )),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "kubeconfig_authority_issued_total{reason=\"Issued\"}"
        ),
        Some(1.0)
    );

    // The leader dies without a word (no lease release); meanwhile a Kubeconfig arrives.
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let killed = Instant::now();
    create(&admin, &ns, "during").await;
    eventually(Duration::from_secs(20), "replica b leads", || async {
        let r = role(port_b).await;
        if r.contains("leader") { Ok(()) } else { Err(r) }
    })
    .await;
    let takeover = killed.elapsed();
    println!("replica b led {takeover:?} after replica a was killed");
    assert!(takeover < Duration::from_secs(15), "{takeover:?}");

    // Nothing lost, nothing issued twice.
    wait_ready(&admin, &ns, "during").await;
    let after = wait_ready(&admin, &ns, "before").await;
    assert_eq!(after.status.unwrap().serial_number, serial, "not reissued");
    let version = Api::<Secret>::namespaced(admin.clone(), &ns)
        .get("before")
        .await
        .unwrap()
        .resource_version();
    assert_eq!(version, secret_version, "its Secret was not written again");
    let (_, metrics) = get(port_b, "/metrics").await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "kubeconfig_authority_issued_total{reason=\"Issued\"}"
        ),
        Some(1.0),
        "replica b issued only the new one"
    );

    // SIGTERM: in-flight work finishes and the lease is released.
    b.stop(Duration::from_secs(10));
    let lease = Api::<Lease>::namespaced(admin.clone(), "kubeconfig-authority-system")
        .get("kubeconfig-authority")
        .await
        .unwrap();
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
            .is_empty(),
        "the lease is free after a graceful stop"
    );
}

/// Every manifest in `config/`, applied with a server-side dry run against the real API server:
/// CRDs, RBAC, the Deployment, the admission policies, samples, the Helm chart's output
/// excepted (its own test renders it).
#[tokio::test]
async fn every_manifest_in_config_passes_a_server_side_dry_run() {
    let plane = plane();
    // The samples live in team-a.
    let team_a: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(plane.admin().await)
        .patch(
            "team-a",
            &PatchParams::apply("tests"),
            &Patch::Apply(&team_a),
        )
        .await
        .unwrap();
    let mut applied = 0;
    for entry in walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config")) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        let relative = entry
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        if !name.ends_with(".yaml")
            || name == "kustomization.yaml"
            || relative.contains("/helm/")
            || relative.contains("/alerts/")
        {
            continue;
        }
        applied += plane.dry_run_manifests(&relative).await;
    }
    assert!(applied >= 15, "only {applied} objects");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `helm template` of the chart as release `kca` in `namespace`, with `args`.
fn helm_template(namespace: &str, args: &[&str]) -> String {
    let mut all = vec![
        "template",
        "kca",
        "config/helm/kubeconfig-authority",
        "--namespace",
        namespace,
    ];
    all.extend_from_slice(args);
    run_tool("helm", &all, Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// Runs a tool; panics with its output when it fails.
fn run_tool(tool: &str, args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new(crate::support::tools().join(tool))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alerts");
    let checked = run_tool(
        "promtool",
        &["check", "rules", "kubeconfig-authority.rules.yaml"],
        &dir,
    );
    assert!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    let tested = run_tool(
        "promtool",
        &["test", "rules", "kubeconfig-authority.test.yaml"],
        &dir,
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The chart's FlowSchema, applied for real: the Lease requests of the controller's
/// ServiceAccount land in the API server's `leader-election` priority level (they did not
/// before it), and its other requests do not.
#[tokio::test]
async fn the_chart_puts_the_controllers_lease_requests_in_the_leader_election_level() {
    use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
    let plane = plane();
    let admin = plane.admin().await;
    let ns = plane.namespace("flowschema").await;
    let account = format!("system:serviceaccount:{ns}:kubeconfig-authority");
    // The priority level the API server put a request of the controller's account in.
    let level = |path: String| {
        let (admin, account) = (admin.clone(), account.clone());
        async move {
            let request = http::Request::get(path)
                .header("Impersonate-User", account)
                .body(kube::client::Body::empty())
                .unwrap();
            let response = admin.send(request).await.unwrap();
            response
                .headers()
                .get("X-Kubernetes-PF-PriorityLevel-UID")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        }
    };
    let lease = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/kubeconfig-authority");
    let secrets = format!("/api/v1/namespaces/{ns}/secrets");
    let leader_election = Api::<PriorityLevelConfiguration>::all(admin.clone())
        .get("leader-election")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    assert_ne!(
        level(lease.clone()).await,
        leader_election,
        "before the FlowSchema"
    );

    let rendered = helm_template(&ns, &["--show-only", "templates/flowschema.yaml"]);
    // A name of its own on the shared control plane (the chart's is one per cluster).
    let name = format!("{ns}-leader-election");
    let rendered = rendered.replace(
        "name: kubeconfig-authority-leader-election",
        &format!("name: {name}"),
    );
    assert_eq!(
        plane
            .apply_text(&rendered, "the chart's FlowSchema", false)
            .await,
        1
    );
    // The API server takes a new FlowSchema up within a moment.
    eventually(
        Duration::from_secs(20),
        "Lease requests in the leader-election level",
        || async {
            let got = level(lease.clone()).await;
            (got == leader_election).then_some(()).ok_or(got)
        },
    )
    .await;
    assert_ne!(
        level(secrets).await,
        leader_election,
        "only the Lease requests"
    );
    Api::<FlowSchema>::all(admin)
        .delete(&name, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_helm_chart_renders_and_passes_a_server_side_dry_run() {
    let plane = plane();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run_tool("helm", &["lint", "config/helm/kubeconfig-authority"], root);
    let rendered = helm_template(
        "kubeconfig-authority-system",
        &[
            "--include-crds",
            "--set",
            "defaultAuthority=ClusterAuthority/default-ca",
            "--set",
            "replicas=3",
            "--set",
            "logFormat=text",
            "--set",
            "resources.limits.memory=128Mi",
            "--set",
            "extraBindableRoles={admin}",
            "--set",
            "clusterAuthority.create=true",
            "--set",
            "clusterAuthority.server=https://api.example.com:6443",
            "--set",
            "clusterAuthority.policy.maxValidity=720h",
        ],
    );
    let applied = plane.apply_text(&rendered, "helm template", true).await;
    assert!(applied >= 18, "{applied} objects");
    // The values reach the Deployment.
    let deployment = serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|v: &serde_yaml::Value| v["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--default-authority=ClusterAuthority/default-ca"),
        "{args:?}"
    );
    assert!(args.contains(&"--log-format=text"), "{args:?}");
    assert_eq!(container["resources"]["limits"]["memory"], "128Mi");
    assert!(
        rendered.contains("system:serviceaccount:kubeconfig-authority-system:kubeconfig-authority")
    );
    // The chart's ClusterAuthority keeps its CA key in the release's namespace.
    let authority = serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|v: &serde_yaml::Value| v["kind"] == "ClusterAuthority")
        .expect("a ClusterAuthority");
    assert_eq!(
        authority["spec"]["signer"]["caSecretRef"]["namespace"],
        "kubeconfig-authority-system"
    );
    assert_eq!(authority["spec"]["policy"]["maxValidity"], "720h");
}

/// The API server hangs (SIGSTOP: the kernel accepts connections and keeps the open ones,
/// nothing answers) for 25 s, longer than the Lease, while two replicas run and twenty
/// Kubeconfigs are being issued. The leader, whose renewal gets no answer, stops leading
/// before its Lease can expire (client-go's renew deadline): kube-lease-manager alone kept
/// saying "leader" while its renewal waited, and a standby takes an expired Lease, so both
/// would have reconciled once the API server answered. After it answers: one leader, every
/// Kubeconfig Ready, and each Secret held one certificate only.
#[tokio::test]
async fn a_hung_api_server_leaves_one_leader_and_issues_nothing_twice() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let (plane, admin, ns) = ha_plane().await;
    let ((mut a, port_a), (mut b, port_b)) = two_replicas(&plane).await;
    // Every credential each Secret of the namespace ever held, from before the first write.
    let held = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        std::collections::BTreeSet<String>,
    >::new()));
    let watching = {
        let (secrets, held) = (Api::<Secret>::namespaced(admin.clone(), &ns), held.clone());
        tokio::spawn(async move {
            let mut seen =
                std::pin::pin!(watcher(secrets, watcher::Config::default()).applied_objects());
            while let Some(secret) = seen.next().await {
                let Ok(secret) = secret else { continue };
                let credential = secret
                    .annotations()
                    .get(kubeconfig_authority::api::CREDENTIAL_ANNOTATION)
                    .cloned();
                if let Some(credential) = credential {
                    held.lock()
                        .unwrap()
                        .entry(secret.name_any())
                        .or_default()
                        .insert(credential);
                }
            }
        })
    };
    let names: Vec<String> = (0..20).map(|i| format!("hung-{i}")).collect();
    for name in &names {
        create(&admin, &ns, name).await;
    }
    plane.freeze_component("kube-apiserver", true);
    let frozen = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    // The Lease was last renewed at most 3 s before the hang and expires 10 s after that.
    let (role_a, role_b) = (role(port_a).await, role(port_b).await);
    println!(
        "{:?} into the hang: a says {role_a:?}, b says {role_b:?}",
        frozen.elapsed()
    );
    assert!(
        !role_a.contains("leader") && !role_b.contains("leader"),
        "no replica may lead on a Lease it could not renew: a says {role_a:?}, b says {role_b:?}"
    );
    tokio::time::sleep(Duration::from_secs(13)).await;
    plane.freeze_component("kube-apiserver", false);
    eventually(Duration::from_secs(40), "one replica leads", || async {
        let (role_a, role_b) = (role(port_a).await, role(port_b).await);
        match (role_a.contains("leader"), role_b.contains("leader")) {
            (true, false) | (false, true) => Ok(()),
            _ => Err(format!("a says {role_a:?}, b says {role_b:?}")),
        }
    })
    .await;
    for name in &names {
        wait_ready(&admin, &ns, name).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    watching.abort();
    let held = held.lock().unwrap().clone();
    for name in &names {
        let credentials = held.get(name).map_or(0, |c| c.len());
        assert_eq!(
            credentials, 1,
            "Secret {name} held {credentials} certificates"
        );
    }
    for port in [port_a, port_b] {
        let (_, metrics) = get(port, "/metrics").await.unwrap();
        for reason in ["Renewed", "Reissued", "Repaired"] {
            let series = format!("kubeconfig_authority_issued_total{{reason=\"{reason}\"}}");
            assert_eq!(metric(&metrics, &series).unwrap_or(0.0), 0.0, "{series}");
        }
    }
    a.stop(Duration::from_secs(10));
    b.stop(Duration::from_secs(10));
}
