//! The controller installed for real: its image (`make image`) imported into a real node's
//! containerd, installed with `helm install` and with `kubectl apply -k`, running as two pods
//! that issue kubeconfigs which work, fail over, upgrade and uninstall as the README says.
//! Needs root (the node's namespaces, cgroups and links); `make node-test` runs it.

use kubeconfig_authority_testenv as support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::SelfSubjectReview,
    core::v1::{Pod, Secret},
    rbac::v1::ClusterRole,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, PostParams},
};
use kubeconfig_authority::api::{ClusterAuthority, Kubeconfig};
use serde_json::json;
use support::{
    ControlPlane,
    node::Node,
    objects::{
        apply, create_namespace, eventually, kubeconfig_of, put_ca_secret, secret, spec, wait_ready,
    },
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const SYSTEM: &str = "kubeconfig-authority-system";
const SELECTOR: &str = "app.kubernetes.io/name=kubeconfig-authority";

/// `make image` into `archive`: (image reference, digest).
fn build_image(archive: &Path) -> (String, String) {
    let out = Command::new(Path::new(REPO).join("config/image/controller.sh"))
        .env("ARCHIVE", archive)
        .current_dir(REPO)
        .output()
        .expect("run config/image/controller.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "make image failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "<archive> <name:tag>@<digest>"
    let reference = stdout.split_whitespace().nth(1).expect("a reference");
    let (image, digest) = reference.split_once('@').expect("name@digest");
    (image.to_string(), digest.to_string())
}

fn run(program: &Path, args: &[&str], kubeconfig: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(REPO)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

/// GET `path` on port 8080 of a pod, through the API server's pod proxy: (ok, body).
async fn pod_get(admin: &Client, pod: &str, path: &str) -> (bool, String) {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{SYSTEM}/pods/{pod}:8080/proxy{path}"
    ))
    .body(Vec::new())
    .expect("a request");
    match admin.request_text(request).await {
        Ok(body) => (true, body),
        Err(kube::Error::Api(status)) => (false, status.message),
        Err(e) => (false, e.to_string()),
    }
}

/// Whether a replica's `/readyz` says it leads (synced, or still filling its caches).
fn leads(readyz: &str) -> bool {
    readyz.starts_with("ok: leader") || readyz.starts_with("leader,")
}

/// The controller's pods, Running and Ready.
async fn ready_pods(admin: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(admin.clone(), SYSTEM)
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Waits for `count` Ready pods of the controller and returns them with the leader first.
async fn replicas(admin: &Client, count: usize, timeout: Duration) -> Vec<Pod> {
    eventually(
        timeout,
        "the controller's replicas Ready, one leading",
        || {
            let admin = admin.clone();
            async move {
                let mut pods = ready_pods(&admin).await;
                if pods.len() != count {
                    return Err(format!("{} Ready pods", pods.len()));
                }
                let mut leaders = Vec::new();
                for (i, pod) in pods.iter().enumerate() {
                    let (_, body) = pod_get(&admin, &pod.name_any(), "/readyz").await;
                    if leads(&body) {
                        leaders.push(i);
                    }
                }
                match leaders[..] {
                    [i] => {
                        pods.swap(0, i);
                        Ok(pods)
                    }
                    _ => Err(format!("{} replicas say they lead", leaders.len())),
                }
            }
        },
    )
    .await
}

/// What every replica must be: non-root, a read-only root file system, the probes as shipped.
fn assert_hardened(pod: &Pod) {
    let spec = pod.spec.as_ref().expect("a pod spec");
    let security = spec
        .security_context
        .as_ref()
        .expect("a pod securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    let container = &spec.containers[0];
    let container_security = container
        .security_context
        .as_ref()
        .expect("a securityContext");
    assert_eq!(container_security.read_only_root_filesystem, Some(true));
    assert_eq!(container_security.allow_privilege_escalation, Some(false));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/livez")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
}

/// A Kubeconfig for `user` in `ns` from the ClusterAuthority `cluster-ca`, allowed to view `ns`.
async fn issue(admin: &Client, ns: &str, user: &str) -> Kubeconfig {
    apply(
        admin,
        ns,
        user,
        spec(
            user,
            json!({"authorityRef": {"kind": "ClusterAuthority", "name": "cluster-ca"},
                "authorization": {"roleBindings": [{"namespace": ns, "clusterRole": "view"}]}}),
        ),
    )
    .await;
    wait_ready(admin, ns, user).await
}

/// The kubeconfig issued for `user` works: the API server knows who it is, lets it list pods in
/// `ns` (view) and refuses it Secrets.
async fn assert_works(admin: &Client, ns: &str, user: &str) {
    let yaml = kubeconfig_of(admin, ns, &format!("{user}-kubeconfig")).await;
    let client = support::client_from_kubeconfig(&yaml).await;
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    let who = review.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(who.username.as_deref(), Some(user));
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("view lets it list pods");
    let refused = Api::<Secret>::namespaced(client, ns)
        .list(&ListParams::default())
        .await;
    assert_eq!(support::objects::code(refused), 403, "Secrets are refused");
}

async fn resource_version(admin: &Client, ns: &str, name: &str) -> String {
    secret(admin, ns, name)
        .await
        .and_then(|s| s.metadata.resource_version)
        .unwrap_or_else(|| panic!("Secret {ns}/{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_with_helm_and_kustomize_it_runs_on_a_real_node() {
    // The image, built twice from the same commit: the same digest, under 20 MiB.
    let images = Path::new(REPO).join("target/image");
    let archive = images.join("node-test.oci.tar");
    let (image, digest) = build_image(&archive);
    let (_, again) = build_image(&images.join("node-test-again.oci.tar"));
    assert_eq!(digest, again, "the image is reproducible");
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size < 20 << 20, "the image archive is {size} bytes");
    let (repository, tag) = image.rsplit_once(':').expect("name:tag");

    let n = Node::pick();
    let plane = std::thread::spawn(move || ControlPlane::start_with(Some(Node::host_address(n))))
        .join()
        .expect("start-up thread")
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    plane.start_controller_manager();
    let node = Node::start(&plane, n, std::slice::from_ref(&archive))
        .await
        .unwrap_or_else(|e| panic!("starting the node: {e}"));
    let admin = plane.admin().await;
    let kubeconfig = plane.admin_kubeconfig_path();
    let helm = support::tools().join("helm");
    let kubectl = support::node::binaries()
        .expect("node binaries")
        .join("kubectl");

    // helm install, with the image and a ClusterAuthority (its CA key in the release's
    // namespace) set by values.
    create_namespace(&admin, SYSTEM).await;
    put_ca_secret(
        &admin,
        SYSTEM,
        "cluster-ca",
        &plane.ca.cert_pem,
        &plane.ca.key_pem,
    )
    .await;
    let server = format!("clusterAuthority.server={}", plane.server);
    let image_values = [
        "--set".to_string(),
        format!("image.repository={repository}"),
        "--set".to_string(),
        format!("image.tag={tag}"),
        "--set".to_string(),
        "image.pullPolicy=Never".to_string(),
    ];
    let mut install: Vec<&str> = vec![
        "install",
        "kca",
        "config/helm/kubeconfig-authority",
        "--namespace",
        SYSTEM,
        "--set",
        "clusterAuthority.create=true",
        "--set",
        &server,
        "--wait",
        "--timeout",
        "3m",
    ];
    install.extend(image_values.iter().map(String::as_str));
    run(&helm, &install, &kubeconfig);
    let pods = replicas(&admin, 2, Duration::from_secs(120)).await;
    pods.iter().for_each(assert_hardened);
    let leader = pods[0].name_any();

    // A Kubeconfig applied now is issued by the controller in the pod, and works.
    let team = "team-node";
    create_namespace(&admin, team).await;
    issue(&admin, team, "alice").await;
    assert_works(&admin, team, "alice").await;
    let log = Api::<Pod>::namespaced(admin.clone(), SYSTEM)
        .logs(&leader, &LogParams::default())
        .await
        .expect("the leader's log");
    assert!(
        log.lines()
            .any(|l| l.contains("Issued") && l.contains("team-node/alice")),
        "the leader's log says it issued alice's kubeconfig:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colour codes in a pod's log"
    );
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
    }
    // Its metrics, scraped through the API server's pod proxy.
    let (ok, metrics) = pod_get(&admin, &leader, "/metrics").await;
    assert!(ok, "{metrics}");
    let issued = metrics
        .lines()
        .find(|l| l.starts_with("kubeconfig_authority_issued_total{") && l.contains("Issued"))
        .unwrap_or_else(|| panic!("no issued counter in:\n{metrics}"));
    assert!(!issued.ends_with(" 0"), "{issued}");

    // The leader's pod goes: the other replica leads within 15 s and issues what arrives
    // meanwhile; nothing is reissued.
    let alice_version = resource_version(&admin, team, "alice-kubeconfig").await;
    let pods_api = Api::<Pod>::namespaced(admin.clone(), SYSTEM);
    let deleted = Instant::now();
    pods_api
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader's pod");
    let follower = pods[1].name_any();
    apply(
        &admin,
        team,
        "bob",
        spec(
            "bob",
            json!({"authorityRef": {"kind": "ClusterAuthority", "name": "cluster-ca"}}),
        ),
    )
    .await;
    // Whoever is first takes the released Lease: the waiting replica, or the one the
    // ReplicaSet starts in place of the deleted pod (seen to win by half a second).
    let successor = eventually(Duration::from_secs(15), "another replica leads", || {
        let (admin, leader) = (admin.clone(), leader.clone());
        async move {
            for pod in ready_pods(&admin).await {
                let name = pod.name_any();
                if name != leader && leads(&pod_get(&admin, &name, "/readyz").await.1) {
                    return Ok(name);
                }
            }
            Err("no other replica leads yet".to_string())
        }
    })
    .await;
    let which = if successor == follower {
        "the waiting replica"
    } else {
        "the replacement pod"
    };
    println!(
        "{which} led {:.1?} after the leader's pod was deleted",
        deleted.elapsed()
    );
    wait_ready(&admin, team, "bob").await;
    assert_eq!(
        resource_version(&admin, team, "alice-kubeconfig").await,
        alice_version,
        "nothing reissued"
    );
    replicas(&admin, 2, Duration::from_secs(120)).await;

    // helm upgrade with a changed value rolls the pods and writes no Secret.
    let bob_version = resource_version(&admin, team, "bob-kubeconfig").await;
    let before: Vec<String> = ready_pods(&admin)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let mut upgrade: Vec<&str> = vec![
        "upgrade",
        "kca",
        "config/helm/kubeconfig-authority",
        "--namespace",
        SYSTEM,
        "--reuse-values",
        "--set",
        "logLevel=debug",
        "--wait",
        "--timeout",
        "3m",
    ];
    upgrade.extend(image_values.iter().map(String::as_str));
    run(&helm, &upgrade, &kubeconfig);
    let after = replicas(&admin, 2, Duration::from_secs(120)).await;
    assert!(
        after.iter().all(|p| !before.contains(&p.name_any())),
        "the pods rolled: {before:?}"
    );
    // Give the new leader time to go through every Kubeconfig.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        resource_version(&admin, team, "alice-kubeconfig").await,
        alice_version
    );
    assert_eq!(
        resource_version(&admin, team, "bob-kubeconfig").await,
        bob_version
    );

    // helm uninstall removes what the chart made; issued Secrets, Kubeconfigs and CRDs stay.
    run(
        &helm,
        &["uninstall", "kca", "--namespace", SYSTEM, "--wait"],
        &kubeconfig,
    );
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), SYSTEM)
            .get_opt("kubeconfig-authority")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt("kubeconfig-authority")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        resource_version(&admin, team, "alice-kubeconfig").await,
        alice_version
    );
    assert!(
        Api::<Kubeconfig>::namespaced(admin.clone(), team)
            .get_opt("alice")
            .await
            .unwrap()
            .is_some()
    );
    // The chart's ClusterAuthority stays too (helm.sh/resource-policy: keep): a controller
    // that found it gone would withdraw every kubeconfig it issued.
    assert!(
        Api::<ClusterAuthority>::all(admin.clone())
            .get_opt("cluster-ca")
            .await
            .unwrap()
            .is_some(),
        "helm uninstall left the ClusterAuthority"
    );
    eventually(
        Duration::from_secs(60),
        "the controller's pods gone",
        || {
            let pods_api = pods_api.clone();
            async move {
                let left = pods_api
                    .list(&ListParams::default().labels(SELECTOR))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} pods"))
                }
            }
        },
    )
    .await;

    // kubectl apply -k, with the image set by a kustomize `images:` entry.
    let overlay = tempfile::Builder::new()
        .prefix("kustomize-")
        .tempdir_in(Path::new(REPO).join("target"))
        .expect("a kustomization folder");
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - ../../config/default\n\
             images:\n  - name: kubeconfig-authority\n    newName: {repository}\n    newTag: \"{tag}\"\n"
        ),
    )
    .expect("write the kustomization");
    let overlay_path = overlay.path().display().to_string();
    run(&kubectl, &["apply", "-k", &overlay_path], &kubeconfig);
    let pods = replicas(&admin, 2, Duration::from_secs(120)).await;
    pods.iter().for_each(assert_hardened);
    let running = pods[0].spec.as_ref().unwrap().containers[0].image.clone();
    assert_eq!(running.as_deref(), Some(image.as_str()));
    // The kustomize install serves the ClusterAuthority the chart left: it issues what is new
    // and leaves what the chart's controller issued as it is.
    issue(&admin, team, "carol").await;
    assert_works(&admin, team, "carol").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        resource_version(&admin, team, "alice-kubeconfig").await,
        alice_version
    );
    run(
        &kubectl,
        &[
            "delete",
            "-k",
            &overlay_path,
            "--wait=false",
            "--ignore-not-found",
        ],
        &kubeconfig,
    );

    // Nothing of the node stays on the host.
    let dir = node.dir.clone();
    drop(node);
    assert_no_trace(n, &dir);
}

/// After a node stopped: no process of it, no link, no cgroup, no iptables rule, no mount.
fn assert_no_trace(n: u8, dir: &Path) {
    let dir = dir.display().to_string();
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) {
            processes.push(cmdline);
        }
    }
    assert!(processes.is_empty(), "processes left: {processes:?}");
    let link = Command::new("ip")
        .args(["link", "show", &format!("kanode{n}")])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the node's link is left");
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(format!("kubeconfig-authority-node-{n}")))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    // kube-proxy's and the CNI plugins' rules lived in the node's network namespace only.
    let nat = Command::new("iptables-save").output().unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains("KUBE-") && !nat.contains("CNI-"),
        "iptables rules on the host:\n{nat}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir) && !mounts.contains("kubeconfig-authority-node"),
        "mounts left"
    );
}
