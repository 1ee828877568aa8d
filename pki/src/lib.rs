//! Keys, certificate authorities, client certificates and kubeconfig files.
//!
//! Everything kubeconfig-authority knows about X.509 and kubeconfigs lives here, with no
//! Kubernetes client, no async and no I/O: callers hand in PEM text and the current time, and
//! get back PEM text, YAML and plain data. That keeps it fast, testable without a cluster, and
//! shared by the controller and the offline command line.
//!
//! Private keys never appear in an [`Error`] or in a `Debug` output of this crate.

mod ca;
mod duration;
mod error;
mod identity;
mod inspect;
mod key;
pub mod kubeconfig;
mod pem_util;
mod renewal;

pub use ca::{CertificateAuthority, CertificateRequest, IssuedCertificate, NewRequest};
pub use duration::{MAX_DURATION, format_duration, parse_duration};
pub use error::Error;
pub use identity::{Identity, KUBECONFIG_GROUP_PREFIX};
pub use inspect::{
    CertificateInfo, Verification, credential_id, fingerprint, inspect_certificate, verify_against,
};
pub use key::{KeyAlgorithm, PrivateKey};
pub use pem_util::parse_certificates;
pub use renewal::{
    MIN_RENEWAL_FLOOR, MIN_VALIDITY, WriteBudget, effective_renew_before, max_jitter,
    renewal_floor, renewal_time,
};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
