//! `crds/` is generated from the Rust types; this fails when it is stale.

#[test]
fn crds_are_up_to_date() {
    let generated = kubeconfig_authority::api::crds_yaml().unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/kubeconfig-authority.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        generated == committed,
        "crds/kubeconfig-authority.yaml is stale: run `cargo run -- crd > crds/kubeconfig-authority.yaml`"
    );
}
