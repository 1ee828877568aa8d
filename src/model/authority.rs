//! An authority resolved for use: where kubeconfigs point and what signs.

use std::sync::Arc;

use kubeconfig_authority_pki::CertificateAuthority;

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
