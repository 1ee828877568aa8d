//! `make demo`: the main job end to end on a machine with nothing running. Starts the local
//! control plane, installs the CRDs and the admission policies, runs the controller, applies
//! the sample `Kubeconfig` (with the sample ClusterAuthority signing with the cluster CA, whose
//! key stays in the controller's namespace), waits for it, writes the issued kubeconfig to a
//! file with `kubeconfig-authority get`, asks the API server who it is (SelfSubjectReview),
//! prints the answer and stops everything. With `KEEP=1` it leaves the control plane and the
//! controller running and says how to reach them.

use kubeconfig_authority_testenv as support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{authentication::v1::SelfSubjectReview, core::v1::Secret};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::{ClusterAuthority, Kubeconfig};
use serde_json::json;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let keep = std::env::var("KEEP").is_ok_and(|v| v == "1");
    if keep {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("KUBECONFIG_AUTHORITY_KEEP", "1") };
    }
    let bin = std::env::var("KUBECONFIG_AUTHORITY_BIN")
        .unwrap_or_else(|_| "target/debug/kubeconfig-authority".into());

    step("starting etcd and kube-apiserver");
    let plane = std::thread::spawn(support::ControlPlane::start)
        .join()
        .map_err(|_| "start-up panicked")??;
    let dir = plane.dir.path().to_path_buf();
    step(
        "installing the CRDs from crds/; starting kube-controller-manager (it aggregates the view role)",
    );
    plane.install_crds().await;
    plane.install_controller_rbac().await;
    plane.start_controller_manager();
    step("installing the escalation guard from config/admission/ (ValidatingAdmissionPolicies)");
    plane.apply_manifests("config/rbac/team_roles.yaml").await;
    plane
        .apply_manifests("config/admission/policies.yaml")
        .await;
    plane.wait_for_escalation_guard().await;
    step(&format!(
        "running the controller: {bin} run (log: {}/controller.log)",
        dir.display()
    ));
    plane.start_controller(Path::new(&bin), &[]);

    let admin = plane.admin().await;
    let ns = "team-a";
    let sample = |name: &str| -> Result<serde_yaml::Value, Error> {
        Ok(serde_yaml::from_str(&std::fs::read_to_string(
            Path::new("config/samples").join(name),
        )?)?)
    };
    let system = "kubeconfig-authority-system";
    step(&format!(
        "creating namespace team-a, the CA Secret in {system} (the cluster's CA, kubeadm style; no team reads Secrets there) and the ClusterAuthority from config/samples/authority.yaml"
    ));
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    let params = PatchParams::apply("demo").force();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(ns, &params, &Patch::Apply(&namespace))
        .await?;
    let ca_secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cluster-ca"},
        "stringData": {"ca.crt": plane.ca.cert_pem, "ca.key": plane.ca.key_pem},
    });
    Api::<Secret>::namespaced(admin.clone(), system)
        .patch("cluster-ca", &params, &Patch::Apply(&ca_secret))
        .await?;
    let mut authority: ClusterAuthority = serde_yaml::from_value(sample("authority.yaml")?)?;
    authority.spec.config.server = Some(plane.server.clone());
    Api::<ClusterAuthority>::all(admin.clone())
        .create(&PostParams::default(), &authority)
        .await?;

    step("applying config/samples/kubeconfig.yaml");
    let kubeconfig: Kubeconfig = serde_yaml::from_value(sample("kubeconfig.yaml")?)?;
    println!("{}", serde_yaml::to_string(&kubeconfig.spec)?);
    let started = Instant::now();
    let api = Api::<Kubeconfig>::namespaced(admin.clone(), ns);
    api.create(&PostParams::default(), &kubeconfig).await?;
    let ready = loop {
        let kc = api.get("susan").await?;
        let condition = kc
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        if let Some(c) = condition.filter(|c| c.status == "True") {
            break (kc, c);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "not Ready after 30 s: {:?}; see {}/controller.log",
                kc.status,
                dir.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = ready.0.status.clone().unwrap_or_default();
    println!(
        "Ready after {:?}: {} ({}), serial {}, expires {}, renews {}",
        started.elapsed(),
        ready.1.reason,
        ready.1.message,
        status.serial_number.unwrap_or_default(),
        status
            .not_after
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        status
            .renewal_time
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    );

    let file = dir.join("susan.kubeconfig");
    step(&format!(
        "kubeconfig-authority get susan -n team-a -o {}",
        file.display()
    ));
    let got = Command::new(&bin)
        .args(["get", "susan", "-n", ns, "-o"])
        .arg(&file)
        .env("KUBECONFIG", plane.admin_kubeconfig_path())
        .status()?;
    if !got.success() {
        return Err(format!("{bin} get failed: {got}").into());
    }
    Command::new(&bin).arg("inspect").arg(&file).status()?;

    step("asking the API server who this kubeconfig is (SelfSubjectReview)");
    let client = support::client_from_kubeconfig(&std::fs::read_to_string(&file)?).await;
    let review: SelfSubjectReview = serde_json::from_value(json!({}))?;
    let answer = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let user = answer
        .status
        .and_then(|s| s.user_info)
        .ok_or("no userInfo in the answer")?;
    println!("username: {}", user.username.unwrap_or_default());
    println!("groups:   {}", user.groups.unwrap_or_default().join(", "));
    // The sample binds view in team-a, through the group only this object's certificates carry.
    plane.wait_for_aggregated_roles().await;
    let list = |resource: &'static str| {
        let client = client.clone();
        async move {
            let request = http::Request::get(format!("/api/v1/namespaces/{ns}/{resource}"))
                .body(Vec::new())
                .expect("request");
            match client.request_text(request).await {
                Ok(_) => "allowed".to_string(),
                Err(kube::Error::Api(s)) => format!("{} {}", s.code, s.reason),
                Err(e) => e.to_string(),
            }
        }
    };
    println!(
        "as susan: list configmaps in {ns}: {}",
        list("configmaps").await
    );
    println!(
        "as susan: list secrets in {ns}:    {} (view does not read secrets)",
        list("secrets").await
    );

    if keep {
        let server = plane.server.clone();
        let dir = plane.detach();
        println!("\nThe control plane and the controller keep running at {server}.");
        println!(
            "  admin:  export KUBECONFIG={}/admin.kubeconfig",
            dir.display()
        );
        println!("  susan:  export KUBECONFIG={}", file.display());
        println!("  logs:   {}/controller.log", dir.display());
        println!("  stop:   {}/stop", dir.display());
    } else {
        step("stopping");
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}
