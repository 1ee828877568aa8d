//! The labels, annotations and ownerReference that tie what the controller writes to its
//! Kubeconfig: written and read here only.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::api::{
    KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig, MANAGED_BY, MANAGED_BY_LABEL,
};

pub fn labels_match(labels: Option<&BTreeMap<String, String>>, uid: &str) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    get(MANAGED_BY_LABEL) == Some(MANAGED_BY) && get(KUBECONFIG_UID_LABEL) == Some(uid)
}

pub fn owned_labels(uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
        (KUBECONFIG_UID_LABEL.into(), uid.into()),
    ])
}

pub fn owner_annotation(kc: &Kubeconfig) -> BTreeMap<String, String> {
    BTreeMap::from([(
        KUBECONFIG_ANNOTATION.into(),
        format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any()),
    )])
}

pub fn owner_reference(kc: &Kubeconfig, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: Kubeconfig::api_version(&()).into_owned(),
        kind: Kubeconfig::kind(&()).into_owned(),
        name: kc.name_any(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The Kubeconfig (`namespace`, `name`) an owner annotation names.
pub fn owner_of(annotation: &str) -> Option<(&str, &str)> {
    annotation.split_once('/')
}
