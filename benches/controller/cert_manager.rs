//! cert-manager, side by side: its controller (`tests/tools/build.sh certmanager`, built from its
//! published Go module), its CRDs, a CA Issuer, and client-auth Certificates shaped like a
//! Kubeconfig's credential (commonName, organizations, the key the bench asks for).

use kubeconfig_authority_testenv as support;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Secret,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::{ControlPlane, Process};

use super::{Error, Key, Report, Row, Scale};

/// Client limits cert-manager's controller runs with.
pub struct Flags {
    pub label: &'static str,
    qps: u32,
    burst: u32,
}

/// cert-manager's defaults (`--kube-api-qps 20 --kube-api-burst 50`), and limits high enough
/// never to throttle it here.
pub const DEFAULT: Flags = Flags {
    label: "default client limits",
    qps: 20,
    burst: 50,
};
pub const TUNED: Flags = Flags {
    label: "QPS 1000 / burst 2000",
    qps: 1000,
    burst: 2000,
};

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cert-manager.io", "v1", kind))
}

/// Builds (once, cached) cert-manager's controller, installs its CRDs and makes the CA Issuer
/// `ca` in `ns` from the plane's CA. Returns the controller's binary.
pub async fn install(plane: &ControlPlane, admin: &Client, ns: &str) -> Result<PathBuf, Error> {
    let tools = std::thread::spawn(|| support::tool_set("certmanager"))
        .join()
        .map_err(|_| "building cert-manager failed")?;
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(tools.join("crds"))? {
        let text = std::fs::read_to_string(entry?.path())?;
        crds.push(serde_yaml::from_str::<CustomResourceDefinition>(&text)?);
    }
    support::objects::apply_crds(admin, crds).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "ca-tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": plane.ca.cert_pem, "tls.key": plane.ca.key_pem}}))?;
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let issuer: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Issuer",
        "metadata": {"name": "ca", "namespace": ns},
        "spec": {"ca": {"secretName": "ca-tls"}},
    }))?;
    Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &resource("Issuer"))
        .create(&PostParams::default(), &issuer)
        .await?;
    Ok(tools.join("cert-manager"))
}

/// Starts cert-manager's controller with `flags`, as the admin, logging to
/// `cert-manager-<run>.log` in the plane's folder.
pub fn start(plane: &ControlPlane, binary: &std::path::Path, flags: &Flags, run: &str) -> Process {
    let args = [
        "--kubeconfig".to_string(),
        plane.admin_kubeconfig_path().display().to_string(),
        "--kube-api-qps".to_string(),
        flags.qps.to_string(),
        "--kube-api-burst".to_string(),
        flags.burst.to_string(),
    ];
    let log = plane.dir.path().join(format!("cert-manager-{run}.log"));
    Process::spawn(binary, &args, &[], &log).expect("start cert-manager")
}

fn ready(object: &DynamicObject) -> bool {
    object.data["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// A client-auth Certificate like a Kubeconfig's credential, from the Issuer `ca`.
pub async fn create(admin: &Client, ns: &str, name: &str, key: Key) -> Result<(), Error> {
    let (algorithm, size) = match key {
        Key::P256 => ("ECDSA", 256),
        Key::Rsa4096 => ("RSA", 4096),
    };
    let certificate: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"secretName": name, "commonName": name,
            "subject": {"organizations": ["bench"]},
            "usages": ["digital signature", "client auth"], "duration": "24h",
            "privateKey": {"algorithm": algorithm, "size": size},
            "issuerRef": {"name": "ca", "kind": "Issuer"}},
    }))?;
    Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &resource("Certificate"))
        .create(&PostParams::default(), &certificate)
        .await?;
    Ok(())
}

/// Records when each Certificate in `ns` is first Ready.
pub async fn watch(admin: Client, ns: String, seen: Arc<Mutex<HashMap<String, Instant>>>) {
    let api = Api::<DynamicObject>::namespaced_with(admin, &ns, &resource("Certificate"));
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(certificate)) = stream.next().await {
        if ready(&certificate) {
            let Ok(mut seen) = seen.lock() else { return };
            seen.entry(certificate.name_any())
                .or_insert_with(Instant::now);
        }
    }
}

/// Removes the Certificates, CertificateRequests and their Secrets, so that one run does not
/// weigh on the next.
pub async fn clear(admin: &Client, ns: &str) -> Result<(), Error> {
    for kind in ["Certificate", "CertificateRequest"] {
        let api = Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &resource(kind));
        super::delete_all(api, &ListParams::default()).await?;
    }
    super::delete_all(
        Api::<Secret>::namespaced(admin.clone(), ns),
        &ListParams::default().fields("metadata.name!=ca-tls"),
    )
    .await
}

/// The cert-manager version `tests/tools/certmanager/go.mod` pins.
fn version() -> &'static str {
    include_str!("../../tests/tools/certmanager/go.mod")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("github.com/cert-manager/cert-manager ")
        })
        .unwrap_or("(unknown version)")
}

/// cert-manager's part of the run.
pub struct Bench<'a> {
    pub plane: &'a ControlPlane,
    pub admin: &'a Client,
    pub scale: &'a Scale,
    /// The baseline's concurrency, for the creates.
    pub concurrency: usize,
}

impl Bench<'_> {
    /// A fresh cert-manager for each run (its default client limits, its tuned ones, and the
    /// tuned ones for RSA-4096): one Certificate at a time, then the run's bulk batches; its
    /// Certificates, requests and Secrets are removed after each run.
    pub async fn run(&self, report: &mut Report) -> Result<Vec<Row>, Error> {
        let (admin, scale) = (self.admin, self.scale);
        let ns = self.plane.namespace("cert-manager").await;
        let binary = install(self.plane, admin, &ns).await?;
        let ns = ns.as_str();
        let seen = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
        tokio::spawn(watch(admin.clone(), ns.to_string(), seen.clone()));
        let ready = |prefix: &str| {
            seen.lock()
                .map_or(0, |s| s.keys().filter(|k| k.starts_with(prefix)).count())
        };
        let mut rows = Vec::new();
        // With its default limits (QPS 20 for about 25 requests per Certificate) 10,000 would
        // take hours: the first batch only. RSA-4096 on a fresh process of its own: after
        // 10,000 it is still busy for minutes after the last Ready, and the batch would
        // measure that backlog.
        let p256 = |sizes: &[usize]| sizes.iter().map(|&n| (n, Key::P256)).collect::<Vec<_>>();
        let mut runs = Vec::new();
        if let Some(&first) = scale.cert_manager.first() {
            runs.push((&DEFAULT, p256(&[first])));
            runs.push((&TUNED, p256(&scale.cert_manager)));
        }
        if scale.rsa > 0 && scale.cert_manager_rsa {
            runs.push((&TUNED, vec![(scale.rsa, Key::Rsa4096)]));
        }
        for (run, (flags, batches)) in runs.into_iter().enumerate() {
            let who = format!("cert-manager {}, {}", version(), flags.label);
            let mut process = start(self.plane, &binary, flags, &run.to_string());
            let pid = process.child.id();
            // Started once it has issued one Certificate.
            let warm = format!("warm{run}");
            create(admin, ns, &warm, Key::P256).await?;
            super::until(std::time::Duration::from_secs(60), || ready(&warm) == 1).await?;
            let latencies = super::singles(
                scale.single.min(50),
                &format!("single{run}-"),
                |name| async move { create(admin, ns, &name, Key::P256).await },
                |name| seen.lock().is_ok_and(|s| s.contains_key(name)),
            )
            .await?;
            let p50 = super::quantile(&latencies, 0.5);
            report.line(&format!("{who}: one Certificate, p50"), super::ms(p50));
            for (n, key) in batches {
                let prefix = format!("b{run}-{n}-{}-", key as u8);
                let done = super::batch(
                    self.plane,
                    admin,
                    pid,
                    n,
                    self.concurrency,
                    |i| {
                        let name = format!("{prefix}{i}");
                        async move { create(admin, ns, &name, key).await }
                    },
                    || ready(&prefix),
                )
                .await?;
                report.line(
                    &format!("{who}: {n} Certificates ({}), Ready", key.name()),
                    format!(
                        "{} of {n} in {:.2} s, {:.2} ms CPU per Certificate created",
                        done.ready,
                        done.took.as_secs_f64(),
                        done.cpu * 1e3 / n as f64
                    ),
                );
                let p50 = (key == Key::P256).then_some(p50);
                rows.push(Row::new(&who, n, key, &done, super::memory(pid).1, p50));
            }
            process.stop(std::time::Duration::from_secs(10));
            clear(admin, ns).await?;
        }
        Ok(rows)
    }
}
