//! The offline command line's kubeconfigs work against the real API server.

use std::process::Command;

use crate::{
    control_plane::whoami,
    support::{self, client_from_kubeconfig},
};

#[tokio::test]
async fn issued_kubeconfig_authenticates_with_its_identity() {
    let plane = support::shared();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("susan.kubeconfig");
    let status = Command::new(env!("CARGO_BIN_EXE_kubeconfig-authority"))
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
            "--group",
            "ops",
        ])
        .args([
            "--name",
            "susan-laptop",
            "--validity",
            "1h",
            "--key-algorithm",
            "rsa-2048",
            "-o",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let kubeconfig = std::fs::read_to_string(&file).unwrap();
    let (user, groups) = whoami(client_from_kubeconfig(&kubeconfig).await).await;
    assert_eq!(user, "susan");
    assert_eq!(
        groups,
        [
            "developers",
            "ops",
            "kubeconfig:susan-laptop",
            "system:authenticated"
        ]
    );

    let inspect = Command::new(env!("CARGO_BIN_EXE_kubeconfig-authority"))
        .arg("inspect")
        .arg(&file)
        .arg("--ca-bundle")
        .arg(plane.ca_cert_path())
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["certificate"]["identity"]["username"], "susan");
    assert_eq!(report["verification"]["result"], "verified");
    assert_eq!(report["server"], plane.server.as_str());
}
