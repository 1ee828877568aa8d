//! `crds/` and `config/admission/` are generated from the Rust code, and the Helm chart carries
//! copies of them and of the RBAC; this fails when any is stale (`make manifests` renews all).

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

#[test]
fn the_helm_chart_carries_current_copies() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (copy, source) in [
        (
            "crds/kubeconfig-authority.yaml",
            "crds/kubeconfig-authority.yaml",
        ),
        ("files/cluster_role.yaml", "config/rbac/cluster_role.yaml"),
        ("files/team_roles.yaml", "config/rbac/team_roles.yaml"),
        ("files/policies.yaml", "config/admission/policies.yaml"),
    ] {
        let copy_path = format!("{root}/config/helm/kubeconfig-authority/{copy}");
        let copied = std::fs::read_to_string(&copy_path).unwrap_or_default();
        let original = std::fs::read_to_string(format!("{root}/{source}")).unwrap();
        assert!(
            copied == original,
            "config/helm/kubeconfig-authority/{copy} differs from {source}: run `make manifests`"
        );
    }
}
