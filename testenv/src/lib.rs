//! A real Kubernetes control plane for the integration tests: etcd and kube-apiserver (and, on
//! request, kube-controller-manager) on free loopback ports in a temporary folder, with
//! client-certificate authentication from a CA made at run time, RBAC, a ServiceAccount issuer,
//! and the admission plugins of a normal cluster.
//!
//! The binaries come from `KUBEBUILDER_ASSETS` if set, otherwise from the cache that
//! `tests/controlplane/build.sh` fills (it is run here if the cache is empty).
//!
//! No process outlives the test binary: every child is started from one long-lived thread with
//! `PR_SET_PDEATHSIG` (so the kernel kills it when the test process dies, however it dies) in a
//! process group of its own (killed on drop).

pub mod git;
pub mod node;
pub mod objects;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use kube::{
    Client, Config, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
};
use kubeconfig_authority_pki::{
    CertificateAuthority, Identity, KeyAlgorithm,
    kubeconfig::{self, Credential, KubeconfigSpec},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

const VERSIONS: &str = include_str!("../../tests/controlplane/versions.env");
/// The repository (the workspace root), whose `crds/`, `config/` and build scripts the
/// environment uses.
pub(crate) const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The running control plane.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>`
    pub server: String,
    pub ca_cert_pem: String,
    pub ca: TestCa,
    /// Trusted by the API server for client certificates, but signs nothing until a test uses it.
    pub spare_ca: TestCa,
    bin: PathBuf,

    /// The command lines of etcd and kube-apiserver, to start them again after a stop.
    etcd_args: Vec<String>,
    apiserver_args: Vec<String>,
    processes: Mutex<Vec<Process>>,
    controller_manager: OnceLock<()>,
}

static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The username of the controller's ServiceAccount in `config/`.
pub use kubeconfig_authority::api::admission::CONTROLLER_USER;

/// One control plane per test binary, started on first use.
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<ControlPlane> = OnceLock::new();
    SHARED.get_or_init(|| {
        // The caller is usually inside a test's async runtime.
        let plane = ControlPlane::start_apart();
        // A static is never dropped: remove its folder when the test process exits (keep it with
        // KUBECONFIG_AUTHORITY_KEEP_LOGS=1, to read the logs after a failure).
        if std::env::var("KUBECONFIG_AUTHORITY_KEEP_LOGS").is_err() {
            let _ = SHARED_DIR.set(plane.dir.path().to_path_buf());
            extern "C" fn remove_shared_dir() {
                if let Some(dir) = SHARED_DIR.get() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(remove_shared_dir) };
        }
        plane
    })
}

/// The shared control plane with the CRDs installed and the controller (`binary run`) running.
pub fn shared_with_controller(binary: &'static str) -> &'static ControlPlane {
    static STARTED: OnceLock<()> = OnceLock::new();
    let plane = shared();
    STARTED.get_or_init(|| {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                plane.install_crds().await;
                // kube-controller-manager aggregates the view/edit/admin ClusterRoles, collects
                // garbage and deletes namespaces: what a cluster a controller runs in does.
                plane.start_controller_manager();
                plane.install_controller_rbac().await;
                plane.apply_manifests("config/rbac/team_roles.yaml").await;
                plane
                    .apply_manifests("config/admission/policies.yaml")
                    .await;
                plane.wait_for_escalation_guard().await;
                plane.wait_for_aggregated_roles().await;
            });
        })
        .join()
        .expect("installing the CRDs");
        plane.start_controller(
            Path::new(binary),
            &["--default-authority", "ClusterAuthority/default-ca"],
        );
    });
    plane
}

impl ControlPlane {
    /// [`Self::start`] from inside a test's async runtime: on a thread of its own, since
    /// start-up runs a runtime of its own. Panics if it cannot start.
    pub fn start_apart() -> Self {
        std::thread::spawn(Self::start)
            .join()
            .expect("control plane start-up thread")
            .unwrap_or_else(|e| panic!("starting a control plane: {e}"))
    }

    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// A cluster of its own beside the shared one (a target, a tenant): etcd, kube-apiserver
    /// and kube-controller-manager (the aggregated `view` and `edit` roles, the garbage
    /// collector), ready. Panics if it cannot start.
    pub async fn start_other() -> Self {
        let cluster = Self::start_apart();
        cluster.start_controller_manager();
        cluster.wait_for_aggregated_roles().await;
        cluster
    }

    /// As [`Self::start`], and with `node_link` (the host's address on a test node's link, see
    /// [`crate::node`]) the API server also listens there, advertises it as the `kubernetes`
    /// Service's endpoint, has it in its serving certificate, and reaches kubelets with a
    /// client certificate of its own.
    pub fn start_with(node_link: Option<std::net::Ipv4Addr>) -> Result<Self, String> {
        let started = Instant::now();
        let bin = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("kubeconfig-authority-cp-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = |name: &str| dir.path().join(name);

        // The cluster CA signs client certificates (users, the admin), the serving certificate,
        // and, through kube-controller-manager, CSRs.
        let ca = TestCa::new("kubeconfig-authority-test-ca");
        // A second CA the API server also trusts, for tests that rotate a signer's CA.
        let spare_ca = TestCa::new("kubeconfig-authority-spare-ca");
        let link = node_link.map(|a| a.to_string());
        let mut names = vec![
            "localhost",
            "127.0.0.1",
            "kubernetes.default.svc",
            "10.0.0.1",
        ];
        names.extend(link.as_deref());
        let (serving_cert, serving_key) = ca.serving_certificate(&names);
        let sa_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let write = |name: &str, text: &str| {
            std::fs::write(path(name), text).map_err(|e| format!("{name}: {e}"))
        };
        write("ca.crt", &ca.cert_pem)?;
        write(
            "client-ca.crt",
            &format!("{}{}", ca.cert_pem, spare_ca.cert_pem),
        )?;
        write("ca.key", &ca.key_pem)?;
        write("serving.crt", &serving_cert)?;
        write("serving.key", &serving_key)?;
        write("sa.key", &sa_key.serialize_pem())?;
        write("sa.pub", &sa_key.public_key_pem())?;

        let (client_port, peer_port, secure_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let p = |name: &str| path(name).display().to_string();
        let etcd_args = vec![
            format!("--data-dir={}", p("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--name=default".into(),
            "--unsafe-no-fsync".into(),
            // etcd's suggested largest database instead of its default of 2 GiB: the bench's
            // largest scale writes more than that (compaction frees pages, never the file).
            "--quota-backend-bytes=8589934592".into(),
            "--log-level=warn".into(),
        ];
        let etcd = Process::spawn(&bin.join("etcd"), &etcd_args, &[], &path("etcd.log"))?;
        let server = format!("https://127.0.0.1:{secure_port}");
        let (bind, advertise) = match &link {
            Some(address) => ("0.0.0.0", address.as_str()),
            None => ("127.0.0.1", "127.0.0.1"),
        };
        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={secure_port}"),
            format!("--bind-address={bind}"),
            format!("--advertise-address={advertise}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--client-ca-file={}", p("client-ca.crt")),
            // The Node authorizer gives a node's kubelet the rights on its own pods.
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
        ];
        if link.is_some() {
            // Pod logs and exec go through the kubelet, which wants a client certificate.
            let (cert, key) = ca.client_pair("kube-apiserver-kubelet-client", &["system:masters"]);
            write("kubelet-client.crt", &cert)?;
            write("kubelet-client.key", &key)?;
            apiserver_args.extend([
                format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
                format!("--kubelet-client-key={}", p("kubelet-client.key")),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]);
        }
        let apiserver = Process::spawn(
            &bin.join("kube-apiserver"),
            &apiserver_args,
            &[],
            &path("kube-apiserver.log"),
        )?;
        let plane = ControlPlane {
            server,
            ca_cert_pem: ca.cert_pem.clone(),
            ca,
            spare_ca,
            bin,
            etcd_args,
            apiserver_args,
            processes: Mutex::new(vec![etcd, apiserver]),
            controller_manager: OnceLock::new(),
            dir,
        };
        std::fs::write(
            plane.dir.path().join("admin.kubeconfig"),
            plane.admin_kubeconfig(),
        )
        .map_err(|e| e.to_string())?;
        plane.wait_ready(Duration::from_secs(60))?;
        eprintln!(
            "control plane ready at {} in {:.1?} ({})",
            plane.server,
            started.elapsed(),
            plane.dir.path().display()
        );
        Ok(plane)
    }

    /// Stops etcd or kube-apiserver (`"etcd"`, `"kube-apiserver"`): SIGTERM and up to 10 s to
    /// finish, or SIGKILL at once with `kill`.
    pub fn stop_component(&self, name: &str, kill: bool) {
        let mut processes = self.processes.lock().expect("processes");
        let i = processes
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no running {name}"));
        let mut process = processes.remove(i);
        process.stop(if kill {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        });
    }

    /// The process id of a running component (`etcd`, `kube-apiserver`), to read its memory.
    pub fn component_pid(&self, name: &str) -> Option<u32> {
        let processes = self.processes.lock().ok()?;
        processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) a running component: a hung process, whose
    /// connections the kernel keeps, and still accepts, while nothing answers.
    pub fn freeze_component(&self, name: &str, frozen: bool) {
        let pid = self
            .component_pid(name)
            .unwrap_or_else(|| panic!("no running {name}"));
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) sends a signal to one process; no memory is involved.
        let sent = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(sent, 0, "signalling {name} ({pid})");
    }

    /// Starts etcd or kube-apiserver again with its first command line (same ports, same data),
    /// its log appended to; for kube-apiserver, waits until it is ready.
    pub fn start_component(&self, name: &str) {
        let (args, log) = match name {
            "etcd" => (&self.etcd_args, "etcd-restarted.log"),
            "kube-apiserver" => (&self.apiserver_args, "kube-apiserver-restarted.log"),
            other => panic!("cannot restart {other}"),
        };
        let process = Process::spawn(&self.bin.join(name), args, &[], &self.dir.path().join(log))
            .unwrap_or_else(|e| panic!("restarting {name}: {e}"));
        self.processes.lock().expect("processes").push(process);
        if name == "kube-apiserver" {
            // On a thread of its own: the caller is usually inside a test's async runtime, and
            // the wait runs one of its own.
            std::thread::scope(|s| {
                s.spawn(|| self.wait_ready(Duration::from_secs(60)))
                    .join()
                    .expect("waiting for the API server")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// A kubeconfig (YAML) with a client certificate for `username` in `groups`, valid for a day.
    pub fn kubeconfig_for(&self, username: &str, groups: &[&str]) -> String {
        self.ca
            .kubeconfig_for(&self.server, &self.ca_cert_pem, username, groups)
    }

    /// A kubeconfig for `system:masters`.
    pub fn admin_kubeconfig(&self) -> String {
        self.kubeconfig_for("test-admin", &["system:masters"])
    }

    /// The path of a file holding the admin kubeconfig (for processes such as the controller).
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// A client acting as `system:masters`.
    pub async fn admin(&self) -> Client {
        client_from_kubeconfig(&self.admin_kubeconfig()).await
    }

    /// A client acting as `username` in `groups` (plus `system:authenticated`).
    pub async fn client_for(&self, username: &str, groups: &[&str]) -> Client {
        client_from_kubeconfig(&self.kubeconfig_for(username, groups)).await
    }

    /// Creates a namespace of its own for a test: `<prefix>-<random>`.
    pub async fn namespace(&self, prefix: &str) -> String {
        use k8s_openapi::api::core::v1::Namespace;
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("namespace");
        kube::Api::<Namespace>::all(self.admin().await)
            .create(&Default::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// Starts kube-controller-manager (once): CSR signing with the cluster CA, garbage
    /// collection, namespace deletion, ServiceAccount controllers. Start it after the CRDs are established: its
    /// garbage collector learns the kinds at start and then only every 30 s, and until then
    /// the dependents of a custom object (a Kubeconfig's Secret) wait, in growing backoff.
    pub fn start_controller_manager(&self) {
        self.controller_manager.get_or_init(|| {
            let p = |name: &str| self.dir.path().join(name).display().to_string();
            let process = Process::spawn(
                &self.bin.join("kube-controller-manager"),
                &[
                    format!("--kubeconfig={}", p("admin.kubeconfig")),
                    format!("--cluster-signing-cert-file={}", p("ca.crt")),
                    format!("--cluster-signing-key-file={}", p("ca.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--controllers=*".into(),
                    "--use-service-account-credentials=false".into(),
                ],
                &[],
                &self.dir.path().join("kube-controller-manager.log"),
            )
            .expect("start kube-controller-manager");
            self.processes.lock().expect("processes").push(process);
        });
    }

    /// Leaves every process running and the folder in place, and returns the folder, which
    /// holds `stop` (a script that stops them, the API server before etcd) beside the
    /// kubeconfigs and logs. Only processes started with `KUBECONFIG_AUTHORITY_KEEP=1` survive
    /// the exit of this one.
    pub fn detach(mut self) -> PathBuf {
        let processes = std::mem::take(self.processes.get_mut().expect("processes"));
        // Last started first: the controller, kube-controller-manager, kube-apiserver, etcd.
        // Each is named by its pid and its start time (from /proc), so that the script never
        // signals a process that took over a pid later; each leads its own process group.
        let targets: Vec<String> = processes
            .iter()
            .rev()
            .filter_map(|p| {
                let pid = p.child.id();
                Some(format!("{pid}:{}", start_time(pid)?))
            })
            .collect();
        processes.into_iter().for_each(std::mem::forget);
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("a placeholder folder"),
        )
        .keep();
        let script = format!(
            r#"#!/bin/sh
# Stops the demo's processes in order, each within 10 s, then removes this folder. A process is
# signalled (with its process group) only while its pid still has the start time it had.
started() {{ sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }}
# A node beside the control plane (make cluster) goes first.
[ -x "{0}/node/stop" ] && "{0}/node/stop"
for target in {1}; do
  pid=${{target%%:*}}; start=${{target#*:}}
  [ "$(started "$pid")" = "$start" ] || continue
  kill -TERM "-$pid" 2>/dev/null
  for _ in $(seq 100); do [ "$(started "$pid")" = "$start" ] || break; sleep 0.1; done
  [ "$(started "$pid")" = "$start" ] && kill -KILL "-$pid" 2>/dev/null
done
rm -rf "{0}"
"#,
            dir.display(),
            targets.join(" "),
        );
        let stop = dir.join("stop");
        std::fs::write(&stop, script).expect("write the stop script");
        std::fs::set_permissions(&stop, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("make stop executable");
        dir
    }

    /// Adds a process (for example the controller) to those stopped with the control plane.
    pub fn adopt(&self, process: Process) {
        self.processes.lock().expect("processes").push(process);
    }

    /// Applies the CRDs from `crds/` (as a user would) and waits until they are served.
    pub async fn install_crds(&self) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use serde::Deserialize;
        let text = std::fs::read_to_string(Path::new(REPO).join("crds/kubeconfig-authority.yaml"))
            .expect("read crds/");
        let crds = serde_yaml::Deserializer::from_str(&text)
            .map(|document| CustomResourceDefinition::deserialize(document).expect("a CRD"))
            .collect();
        objects::apply_crds(&self.admin().await, crds).await;
    }

    /// Applies every object of a multi-document YAML file of the repository (server-side apply,
    /// as a user would), whatever its kind.
    pub async fn apply_manifests(&self, relative_path: &str) {
        self.apply_file(relative_path, false).await;
    }

    /// Applies every object of a file with a server-side dry run (validation, admission and
    /// defaulting, nothing stored); returns how many objects it held.
    pub async fn dry_run_manifests(&self, relative_path: &str) -> usize {
        self.apply_file(relative_path, true).await
    }

    async fn apply_file(&self, relative_path: &str, dry_run: bool) -> usize {
        let text = std::fs::read_to_string(Path::new(REPO).join(relative_path))
            .unwrap_or_else(|e| panic!("read {relative_path}: {e}"));
        self.apply_text(&text, relative_path, dry_run).await
    }

    /// Applies (or dry-runs) every object of a multi-document YAML text; `origin` names it in
    /// failures. Returns how many objects it held.
    pub async fn apply_text(&self, text: &str, origin: &str, dry_run: bool) -> usize {
        let relative_path = origin;
        use kube::{
            api::{DynamicObject, GroupVersionKind},
            discovery::{Scope, pinned_kind},
        };
        use serde::Deserialize;
        let client = self.admin().await;
        let mut params = kube::api::PatchParams::apply("kubeconfig-authority-tests").force();
        params.dry_run = dry_run;
        let mut count = 0;
        for document in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(document).expect("YAML");
            if value.is_null() {
                continue; // an empty document (helm writes some)
            }
            let object: DynamicObject = serde_yaml::from_value(value).expect("a Kubernetes object");
            count += 1;
            let types = object.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&types).expect("a valid apiVersion");
            let (resource, capabilities) = pinned_kind(&client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("discover {gvk:?}: {e}"));
            let name = object.name_any();
            let api = match (capabilities.scope, object.namespace()) {
                (Scope::Namespaced, Some(ns)) => {
                    kube::Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
                }
                _ => kube::Api::<DynamicObject>::all_with(client.clone(), &resource),
            };
            api.patch(&name, &params, &kube::api::Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| {
                    panic!("apply {} {name} from {relative_path}: {e}", types.kind)
                });
        }
        count
    }

    /// Waits until the escalation guard refuses a request it must refuse (admission policies
    /// take effect a moment after they are created): a user who may create Kubeconfigs but
    /// impersonate no one asks, in a dry run, for someone else's.
    pub async fn wait_for_escalation_guard(&self) {
        use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
        let params = kube::api::PatchParams::apply("kubeconfig-authority-tests").force();
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "guard-probe"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeconfig-authority:requester"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "guard-probe"}],
        }))
        .expect("binding");
        kube::Api::<ClusterRoleBinding>::all(self.admin().await)
            .patch("guard-probe", &params, &kube::api::Patch::Apply(&binding))
            .await
            .expect("bind guard-probe");
        let probe = self.client_for("guard-probe", &[]).await;
        let request = serde_json::json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": "guard-probe", "namespace": "default"},
            "spec": {"username": "someone-else", "validity": "1h", "secretRef": {"name": "guard-probe"}},
        });
        let api = kube::Api::<kube::api::DynamicObject>::namespaced_with(
            probe,
            "default",
            &kube::api::ApiResource::erase::<kubeconfig_authority::api::Kubeconfig>(&()),
        );
        let object: kube::api::DynamicObject = serde_json::from_value(request).expect("object");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match api
                .create(
                    &kube::api::PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &object,
                )
                .await
            {
                Err(kube::Error::Api(status)) if status.message.contains("impersonate") => return,
                other => assert!(
                    Instant::now() < deadline,
                    "the escalation guard did not take effect within 30 s: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until kube-controller-manager has filled in the aggregated `view` ClusterRole.
    pub async fn wait_for_aggregated_roles(&self) {
        use k8s_openapi::api::rbac::v1::ClusterRole;
        let api = kube::Api::<ClusterRole>::all(self.admin().await);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = api.get("view").await.expect("the view ClusterRole");
            if view.rules.is_some_and(|r| !r.is_empty()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the view ClusterRole was not aggregated; see kube-controller-manager.log"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies the controller's namespace, ServiceAccount, ClusterRole and ClusterRoleBinding,
    /// leader-election Role and FlowSchema from `config/`, and writes `controller.kubeconfig`:
    /// a certificate for that ServiceAccount's username, so that the controller runs with
    /// exactly the rights the shipped RBAC gives it (RBAC matches ServiceAccount subjects by
    /// username).
    pub async fn install_controller_rbac(&self) {
        for file in [
            "config/manager/namespace.yaml",
            "config/rbac/service_account.yaml",
            "config/rbac/cluster_role.yaml",
            "config/rbac/cluster_role_binding.yaml",
            "config/rbac/leader_election.yaml",
            "config/manager/flowschema.yaml",
        ] {
            self.apply_manifests(file).await;
        }
        let kubeconfig = self.kubeconfig_for(
            CONTROLLER_USER,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:kubeconfig-authority-system",
            ],
        );
        std::fs::write(self.dir.path().join("controller.kubeconfig"), kubeconfig)
            .expect("write controller.kubeconfig");
    }

    /// Runs `binary run ARGS` as the controller's ServiceAccount (after
    /// [`Self::install_controller_rbac`]); it is stopped with the control plane. Its log is
    /// `controller.log` in the folder.
    pub fn start_controller(&self, binary: &Path, args: &[&str]) -> PathBuf {
        let level = std::env::var("RUST_LOG")
            .unwrap_or_else(|_| "info,kube_client=warn,kube_runtime=warn".into());
        let process = self.spawn_controller(binary, args, &[("RUST_LOG", &level)], "controller");
        let log = process.log.clone();
        self.adopt(process);
        log
    }

    /// Spawns `binary run ARGS` as the controller's ServiceAccount with `envs` added, logging
    /// to `<log_name>.log` in the folder; the caller owns (and stops) the process.
    pub fn spawn_controller(
        &self,
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log_name: &str,
    ) -> Process {
        let log = self.dir.path().join(format!("{log_name}.log"));
        let mut all = vec!["run".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let kubeconfig = self.dir.path().join("controller.kubeconfig");
        let mut env = vec![("KUBECONFIG", kubeconfig.display().to_string())];
        env.extend(envs.iter().map(|(k, v)| (*k, v.to_string())));
        Process::spawn(binary, &all, &env, &log).expect("start the controller")
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let kubeconfig = self.admin_kubeconfig();
        runtime.block_on(async {
            let client = client_from_kubeconfig(&kubeconfig).await;
            let mut last = String::new();
            while Instant::now() < deadline {
                self.check_alive()?;
                let request = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                match client.request_text(request).await {
                    Ok(body) if body.trim() == "ok" => return Ok(()),
                    Ok(body) => last = body,
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(format!(
                "the API server was not ready within {timeout:?}: {last}; see {}",
                self.dir.path().display()
            ))
        })
    }

    fn check_alive(&self) -> Result<(), String> {
        for p in self.processes.lock().map_err(|e| e.to_string())?.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(format!(
                    "{} exited with {status}:\n{}",
                    p.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(processes) = self.processes.get_mut() {
            // The API server first, etcd last.
            while let Some(p) = processes.pop() {
                drop(p);
            }
        }
        // KUBECONFIG_AUTHORITY_KEEP_LOGS=1 keeps the folder (and its logs) after a failure.
        if std::env::var("KUBECONFIG_AUTHORITY_KEEP_LOGS").is_ok()
            && let Ok(placeholder) = tempfile::tempdir()
        {
            let dir = std::mem::replace(&mut self.dir, placeholder).keep();
            eprintln!("kept {}", dir.display());
        }
    }
}

/// A CA made at run time, with the helpers tests need from it.
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
    ca: CertificateAuthority,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let (cert_pem, key_pem, params, key) = self_signed_ca(
            common_name,
            Duration::from_secs(3600),
            Duration::from_secs(30 * 24 * 3600),
            true,
        );
        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem, OffsetDateTime::now_utc())
            .expect("load the CA");
        Self {
            cert_pem,
            key_pem,
            issuer: rcgen::Issuer::new(params, key),
            ca,
        }
    }

    /// A CA certificate and key that expired yesterday (PEM), for tests of bad CAs.
    pub fn expired(common_name: &str) -> ExpiredCa {
        let (cert_pem, key_pem, _, _) = self_signed_ca(
            common_name,
            Duration::from_secs(3 * 86400),
            Duration::ZERO,
            true,
        );
        ExpiredCa { cert_pem, key_pem }
    }

    /// A certificate that is not a CA, with its key (PEM), for tests of bad CAs.
    pub fn leaf_pair() -> (String, String) {
        let (cert_pem, key_pem, _, _) = self_signed_ca(
            "leaf",
            Duration::from_secs(3600),
            Duration::from_secs(86400),
            false,
        );
        (cert_pem, key_pem)
    }

    /// A serving certificate for these names and addresses: (certificate PEM, key PEM).
    pub fn serving_certificate(&self, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("SANs");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("serving key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the serving certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate from this CA for `username` in `groups`, valid for a day, with its
    /// key: (certificate PEM, key PEM).
    pub fn client_pair(&self, username: &str, groups: &[&str]) -> (String, String) {
        let identity = Identity::new(username, groups.iter().copied()).expect("identity");
        let issued = self
            .ca
            .issue(
                &identity,
                KeyAlgorithm::EcdsaP256,
                Duration::from_secs(24 * 3600),
                OffsetDateTime::now_utc(),
            )
            .expect("issue a client certificate");
        (issued.certificate_pem, issued.private_key_pem)
    }

    /// A kubeconfig for `server` (verified with `server_ca_pem`) with a client certificate from
    /// this CA for `username` in `groups`, valid for a day (a cluster `make demo KEEP=1` leaves
    /// running stays usable that long).
    pub fn kubeconfig_for(
        &self,
        server: &str,
        server_ca_pem: &str,
        username: &str,
        groups: &[&str],
    ) -> String {
        let (certificate_pem, private_key_pem) = self.client_pair(username, groups);
        kubeconfig::render(&KubeconfigSpec {
            cluster_name: "test",
            user_name: username,
            context_name: "test",
            server,
            certificate_authority_pem: Some(server_ca_pem),
            namespace: None,
            credential: Credential::ClientCertificate {
                certificate_pem: &certificate_pem,
                private_key_pem: &private_key_pem,
            },
        })
        .expect("render a kubeconfig")
    }
}

pub struct ExpiredCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed certificate valid from `now - back` to `now + ahead - 1 day` when `ahead` is
/// zero (expired), else to `now + ahead`.
fn self_signed_ca(
    common_name: &str,
    back: Duration,
    ahead: Duration,
    is_ca: bool,
) -> (String, String, CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - back;
    params.not_after = if ahead.is_zero() {
        now - Duration::from_secs(86400)
    } else {
        now + ahead
    };
    let cert_pem = params.self_signed(&key).expect("self-sign").pem();
    (cert_pem, key.serialize_pem(), params, key)
}

pub async fn client_from_kubeconfig(yaml: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(yaml).expect("parse kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`): with
/// the pid, it names one process for as long as the machine runs.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(19).map(String::from)
}

/// A child process in its own process group, killed (group and all) on drop, and by the kernel
/// if the test process dies first.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: &Path,
    ) -> Result<Process, String> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child =
            spawn_from_reaper_thread(command).map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Process {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// Sends SIGTERM to the process group, then SIGKILL if it has not exited within `grace`.
    /// A zero `grace` sends SIGKILL only, as `kill -9` does.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = self.child.id() as i32;
        if !grace.is_zero() {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
            // A frozen process (see `ControlPlane::freeze_component`) runs again to handle it.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
                libc::kill(-pgid, libc::SIGCONT);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Children are spawned from one thread that lives as long as the process, because
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, and test threads end
/// early.
fn spawn_from_reaper_thread(mut command: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("process-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    command.process_group(0);
    if detached_mode() {
        return command.spawn();
    }
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner")
        .send((command, reply_tx))
        .map_err(std::io::Error::other)?;
    reply_rx.recv().map_err(std::io::Error::other)?
}

/// With `KUBECONFIG_AUTHORITY_KEEP=1` (as `make demo KEEP=1` sets), processes are started so
/// that they may outlive this one: see [`ControlPlane::detach`].
pub(crate) fn detached_mode() -> bool {
    std::env::var("KUBECONFIG_AUTHORITY_KEEP").is_ok_and(|v| v == "1")
}

/// The folder holding etcd, kube-apiserver and kube-controller-manager.
/// `GET path` on a local HTTP port (a controller's health address): (status line, body).
pub async fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// The folder holding helm and promtool, built once from their Go modules by
/// `tests/tools/build.sh` and cached like the control plane.
pub fn tools() -> PathBuf {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| tool_set("helm")).clone()
}

/// The folder holding a set of tools `tests/tools/build.sh <set>` builds from their Go modules
/// (`flux`, `argocd`), built on first use and cached like the control plane.
pub fn tool_set(set: &str) -> PathBuf {
    let out = Command::new(Path::new(REPO).join("tests/tools/build.sh"))
        .arg(set)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/tools/build.sh");
    assert!(out.status.success(), "tests/tools/build.sh {set} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn binaries() -> Result<PathBuf, String> {
    if let Ok(assets) = std::env::var("KUBEBUILDER_ASSETS") {
        return Ok(PathBuf::from(assets));
    }
    let version = |key: &str| {
        VERSIONS
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::trim)
            .ok_or_else(|| format!("{key} missing from tests/controlplane/versions.env"))
    };
    let cache = std::env::var_os("KUBECONFIG_AUTHORITY_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|d| PathBuf::from(d).join("kubeconfig-authority"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/kubeconfig-authority"))
        })
        .ok_or("neither KUBECONFIG_AUTHORITY_CACHE, XDG_CACHE_HOME nor HOME is set")?;
    let dir = cache.join(format!(
        "controlplane/kubernetes-{}-etcd-{}",
        version("KUBERNETES_VERSION")?,
        version("ETCD_VERSION")?
    ));
    if ["etcd", "kube-apiserver", "kube-controller-manager"]
        .iter()
        .all(|b| dir.join(b).exists())
    {
        return Ok(dir);
    }
    eprintln!("building the control plane binaries (once; several minutes)...");
    let status = Command::new(Path::new(REPO).join("tests/controlplane/build.sh"))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running tests/controlplane/build.sh: {e}"))?;
    if !status.success() {
        return Err(format!("tests/controlplane/build.sh failed ({status})"));
    }
    Ok(dir)
}

pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

pub fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("random");
    u32::from_ne_bytes(bytes)
}
