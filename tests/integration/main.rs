//! Integration tests against a real kube-apiserver and etcd (see the `testenv` crate). One control
//! plane serves every test of this binary; each test works in a namespace of its own.

use kubeconfig_authority_testenv as support;

use kube::{Api, Client, api::PostParams};
use kubeconfig_authority::api::Authority;
use serde_json::json;
pub(crate) use support::objects::*;
use support::{ControlPlane, TestCa};

mod argocd;
mod cli;
mod control_plane;
mod faults;
mod flux;
mod generator;
mod gitops;
mod kubeconfig;
mod operations;
mod security;
mod targets;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_kubeconfig-authority");

/// A controller of `plane` as replica `name` (its `POD_NAME`, the Lease's holder), its health
/// on `port`, with `extra` arguments.
pub(crate) fn replica(
    plane: &ControlPlane,
    name: &str,
    port: u16,
    extra: &[&str],
) -> support::Process {
    let health = format!("127.0.0.1:{port}");
    let mut args = vec!["--health-addr", &health];
    args.extend_from_slice(extra);
    plane.spawn_controller(
        std::path::Path::new(BIN),
        &args,
        &[("POD_NAME", name), ("RUST_LOG", "info")],
        name,
    )
}

pub(crate) fn plane() -> &'static ControlPlane {
    support::shared_with_controller(BIN)
}

/// A namespace with a CA Secret (kubeadm's key names) and an Authority `cluster-ca` using it.
pub(crate) async fn setup(prefix: &str, ca: &TestCa) -> (Client, String) {
    setup_on(plane(), prefix, ca).await
}

/// [`setup`] on another control plane than the shared one.
pub(crate) async fn setup_on(plane: &ControlPlane, prefix: &str, ca: &TestCa) -> (Client, String) {
    let ns = plane.namespace(prefix).await;
    let admin = plane.admin().await;
    put_ca_secret(&admin, &ns, "cluster-ca", &ca.cert_pem, &ca.key_pem).await;
    let authority: Authority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
        "metadata": {"name": "cluster-ca"},
        "spec": {"server": plane.server, "caBundle": {"inline": plane.ca_cert_pem}, "signer": {"caSecretRef": {"name": "cluster-ca"}}},
    }))
    .unwrap();
    Api::<Authority>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &authority)
        .await
        .unwrap();
    (admin, ns)
}
