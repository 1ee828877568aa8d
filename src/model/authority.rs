//! Authorities as values: which one a Kubeconfig uses, what each reads (for the watches), and
//! one resolved for use (where kubeconfigs point and what signs).

use std::sync::Arc;

use kubeconfig_authority_pki::CertificateAuthority;

use crate::api::{AuthorityConfig, AuthorityKind, AuthorityRef, KeyRef, Kubeconfig};

/// A usable authority.
pub struct Resolved {
    pub server: String,
    /// PEM of the bundle that verifies the server.
    pub server_ca_pem: String,
    pub signer: ResolvedSigner,
    /// The target cluster's admin kubeconfig (namespace and key filled in), when the
    /// kubeconfigs are for a cluster other than the controller's own.
    pub target: Option<KeyRef>,
}

/// The key of a target's admin kubeconfig when `spec.target` leaves it out.
pub const TARGET_KEY: &str = "kubeconfig";

/// The signer of a resolved authority.
pub enum ResolvedSigner {
    /// Certificates signed here with this CA.
    Ca(Arc<CertificateAuthority>),
    /// Certificates signed through the CSR API by this signer.
    Csr { signer_name: String },
    /// ServiceAccount tokens with these audiences.
    Token { audiences: Vec<String> },
}

/// The authority a Kubeconfig uses: its own reference, or the controller's default.
pub fn authority_ref<'a>(
    kc: &'a Kubeconfig,
    default: Option<&'a AuthorityRef>,
) -> Option<&'a AuthorityRef> {
    kc.spec.authority_ref.as_ref().or(default)
}

/// Whether a Kubeconfig in `namespace` with this reference uses the given authority.
pub fn refers_to(
    aref: &AuthorityRef,
    namespace: &str,
    kind: AuthorityKind,
    authority_namespace: Option<&str>,
    name: &str,
) -> bool {
    aref.kind == kind
        && aref.name == name
        && match kind {
            AuthorityKind::Authority => authority_namespace == Some(namespace),
            AuthorityKind::ClusterAuthority => true,
        }
}

/// The Secrets (namespace, name) an authority reads: its CA Secret, its CA bundle Secret, its
/// kubeconfig Secret and its target's.
pub fn secrets_of(config: &AuthorityConfig, own_namespace: Option<&str>) -> Vec<(String, String)> {
    let ns =
        |explicit: &Option<String>| explicit.clone().or_else(|| own_namespace.map(String::from));
    let bundle = config
        .ca_bundle
        .as_ref()
        .and_then(|b| b.secret_ref.as_ref());
    let signer = config
        .signer
        .ca_secret_ref
        .as_ref()
        .map(|r| (&r.namespace, &r.name));
    let kubeconfig = config
        .kubeconfig_secret_ref
        .as_ref()
        .map(|r| (&r.namespace, &r.name));
    signer
        .into_iter()
        .chain(bundle.map(|r| (&r.namespace, &r.name)))
        .chain(kubeconfig)
        .chain(config.target.as_ref().map(|t| {
            (
                &t.kubeconfig_secret_ref.namespace,
                &t.kubeconfig_secret_ref.name,
            )
        }))
        .filter_map(|(namespace, name)| Some((ns(namespace)?, name.clone())))
        .collect()
}

/// The ConfigMaps (namespace, name) an authority reads: its CA bundle ConfigMap.
pub fn config_maps_of(
    config: &AuthorityConfig,
    own_namespace: Option<&str>,
) -> Vec<(String, String)> {
    config
        .ca_bundle
        .as_ref()
        .and_then(|b| b.config_map_ref.as_ref())
        .and_then(|r| {
            let ns = r
                .namespace
                .clone()
                .or_else(|| own_namespace.map(String::from))?;
            Some((ns, r.name.clone()))
        })
        .into_iter()
        .collect()
}

/// The ConfigMap kube-controller-manager publishes the cluster's CA in, in every namespace:
/// the default CA bundle of token and CSR authorities.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The admin kubeconfig of an authority's target cluster (namespace and key filled in: an
/// Authority's own namespace, the key [`TARGET_KEY`]), if it names one.
pub fn target_of(config: &AuthorityConfig, own_namespace: Option<&str>) -> Option<KeyRef> {
    let r = &config.target.as_ref()?.kubeconfig_secret_ref;
    Some(KeyRef {
        name: r.name.clone(),
        key: Some(r.key.clone().unwrap_or_else(|| TARGET_KEY.into())),
        namespace: r
            .namespace
            .clone()
            .or_else(|| own_namespace.map(String::from)),
    })
}
