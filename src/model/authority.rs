//! Authorities as values: which one a Kubeconfig uses, what each reads (for the watches), and
//! one resolved for use (where kubeconfigs point and what signs).

use std::sync::Arc;

use kubeconfig_authority_pki::CertificateAuthority;

use crate::api::{AuthorityConfig, AuthorityKind, AuthorityRef, Kubeconfig};

/// A usable authority.
pub struct Resolved {
    pub server: String,
    /// PEM of the bundle that verifies the server.
    pub server_ca_pem: String,
    pub signer: ResolvedSigner,
}

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

/// The Secrets (namespace, name) an authority reads: its CA Secret, its CA bundle Secret and
/// its kubeconfig Secret.
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
