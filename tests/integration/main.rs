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

/// Applies a Kubeconfig of the controller's own cluster and asserts it is Ready within 2.5 s
/// beside `trouble` (what must hold up no one else).
pub(crate) async fn ready_beside(admin: &Client, ns: &str, name: &str, trouble: &str) {
    let asked = std::time::Instant::now();
    apply(admin, ns, name, spec(name, json!({}))).await;
    wait_condition(
        admin,
        ns,
        name,
        "True",
        None,
        std::time::Duration::from_secs(30),
    )
    .await;
    let took = asked.elapsed();
    println!("{name} Ready after {took:?} beside {trouble}");
    assert!(
        took < std::time::Duration::from_millis(2500),
        "{name} took {took:?}: {trouble} held it up"
    );
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
