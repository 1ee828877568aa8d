//! What a term's Kubeconfig watch lets through (the caches themselves are
//! [`crate::client::watch::reflect`]).

use crate::api::{Kubeconfig, ORPHAN_TARGET_ANNOTATION, RENEW_ANNOTATION};

/// What brings a Kubeconfig back through its own watch: anything but its status (and the
/// annotations it does not read). The status is the controller's own, and each write of it
/// would otherwise bring the object back once more for nothing (a third of the reconciles of
/// an issuance; the renewal is scheduled).
pub fn not_status(kc: &Kubeconfig) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = kube::Resource::meta(kc);
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        meta.generation,
        &meta.finalizers,
        meta.deletion_timestamp.is_some(),
        annotation(RENEW_ANNOTATION),
        annotation(ORPHAN_TARGET_ANNOTATION),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}
