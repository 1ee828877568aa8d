//! `crds/` and `config/admission/` are generated from the Rust code; this fails when they are
//! stale.

fn check(generated: String, file: &str, command: &str) {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == committed,
        "{file} is stale: run `cargo run -- {command} > {file}`"
    );
}

#[test]
fn crds_are_up_to_date() {
    check(
        kubeconfig_authority::api::crds_yaml().unwrap(),
        "crds/kubeconfig-authority.yaml",
        "crd",
    );
}

#[test]
fn admission_policies_are_up_to_date() {
    check(
        kubeconfig_authority::api::admission::admission_yaml().unwrap(),
        "config/admission/policies.yaml",
        "admission",
    );
}
