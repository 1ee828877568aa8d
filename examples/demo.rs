//! `make demo`: starts the local control plane, issues a kubeconfig with the offline command
//! line from the cluster's CA, asks the API server who that kubeconfig is (SelfSubjectReview),
//! prints the answer and stops everything. With `KEEP=1` it leaves the control plane running
//! and says how to reach it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{Api, api::PostParams};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keep = std::env::var("KEEP").is_ok_and(|v| v == "1");
    if keep {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("KUBECONFIG_AUTHORITY_KEEP", "1") };
    }
    println!("==> starting etcd and kube-apiserver");
    let plane = std::thread::spawn(support::ControlPlane::start)
        .join()
        .map_err(|_| "start-up panicked")??;
    let dir = plane.dir.path().to_path_buf();
    let kubeconfig = dir.join("susan.kubeconfig");

    println!(
        "==> kubeconfig-authority issue --username susan --group developers --name susan --validity 24h"
    );
    let cli = std::env::var("KUBECONFIG_AUTHORITY_BIN")
        .unwrap_or_else(|_| "target/debug/kubeconfig-authority".into());
    let status = Command::new(&cli)
        .arg("issue")
        .arg("--ca-cert")
        .arg(plane.ca_cert_path())
        .arg("--ca-key")
        .arg(plane.ca_key_path())
        .args([
            "--server",
            &plane.server,
            "--username",
            "susan",
            "--group",
            "developers",
            "--name",
            "susan",
            "--validity",
            "24h",
            "-o",
        ])
        .arg(&kubeconfig)
        .status()
        .map_err(|e| format!("running {cli}: {e}"))?;
    if !status.success() {
        return Err(format!("{cli} issue failed: {status}").into());
    }
    Command::new(&cli)
        .arg("inspect")
        .arg(&kubeconfig)
        .arg("--ca-bundle")
        .arg(plane.ca_cert_path())
        .status()?;

    println!("==> asking the API server who this kubeconfig is (SelfSubjectReview)");
    let client = support::client_from_kubeconfig(&std::fs::read_to_string(&kubeconfig)?).await;
    let review: SelfSubjectReview = serde_json::from_value(serde_json::json!({}))?;
    let answer = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &review)
        .await?;
    let user = answer
        .status
        .and_then(|s| s.user_info)
        .ok_or("no userInfo in the answer")?;
    println!("username: {}", user.username.unwrap_or_default());
    println!("groups:   {}", user.groups.unwrap_or_default().join(", "));

    if keep {
        let server = plane.server.clone();
        let dir = plane.detach();
        println!("\nThe control plane keeps running at {server}.");
        println!(
            "  admin:  export KUBECONFIG={}/admin.kubeconfig",
            dir.display()
        );
        println!("  susan:  export KUBECONFIG={}", kubeconfig.display());
        println!("  stop:   kill $(cat {}/pids)", dir.display());
    } else {
        println!("==> stopping");
    }
    Ok(())
}
