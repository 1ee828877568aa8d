//! Which Kubeconfigs a change of another object brings back: the watch mappers of the
//! Kubeconfig controller, read from the caches only (unit-tested without an API server).
//!
//! - an Authority or ClusterAuthority (its spec, or its coming or going; not its status, which
//!   this controller writes): the Kubeconfigs that use it;
//! - a Secret or ConfigMap an authority reads (its CA, its CA bundle, its kubeconfig): the
//!   Kubeconfigs of those authorities; `kube-root-ca.crt` also those of its namespace (the
//!   default bundle of token and CSR authorities);
//! - a Namespace (its labels decide which ClusterAuthorities serve it, and where copies go):
//!   its Kubeconfigs and every Kubeconfig that distributes.
//!
//! Managed Secrets, bindings, Roles and CSRs name their Kubeconfig in an annotation
//! ([`crate::model::labels::owner_of`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use crate::api::{
    Authority, AuthorityConfig, AuthorityKind, AuthorityRef, ClusterAuthority, Kubeconfig,
};
use crate::model::authority::{
    ROOT_CA_CONFIG_MAP, authority_ref, config_maps_of, refers_to, secrets_of,
};

/// The objects (namespace, name) an authority reads, of one kind.
type ReadsFn = fn(&AuthorityConfig, Option<&str>) -> Vec<(String, String)>;

/// The caches the mappers read.
#[derive(Clone)]
pub struct Dependents {
    pub kubeconfigs: Store<Kubeconfig>,
    pub authorities: Store<Authority>,
    pub cluster_authorities: Store<ClusterAuthority>,
    /// The authority of Kubeconfigs that name none.
    pub default: Option<AuthorityRef>,
}

impl Dependents {
    /// The Kubeconfigs that use an authority of `kind` (`namespace`: an Authority's).
    pub fn users_of(
        &self,
        kind: AuthorityKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<ObjectRef<Kubeconfig>> {
        users_of(
            &self.kubeconfigs.state(),
            self.default.as_ref(),
            kind,
            namespace,
            name,
        )
    }

    /// The Kubeconfigs of the authorities that read the Secret (namespace, name).
    pub fn of_secret(&self, namespace: &str, name: &str) -> Vec<ObjectRef<Kubeconfig>> {
        self.readers((namespace.to_string(), name.to_string()), secrets_of)
    }

    /// The Kubeconfigs of the authorities that read the ConfigMap, and for `kube-root-ca.crt`
    /// those of its namespace.
    pub fn of_config_map(&self, namespace: &str, name: &str) -> Vec<ObjectRef<Kubeconfig>> {
        let mut out = self.readers((namespace.to_string(), name.to_string()), config_maps_of);
        if name == ROOT_CA_CONFIG_MAP {
            out.extend(
                self.kubeconfigs
                    .state()
                    .iter()
                    .filter(|kc| kc.namespace().as_deref() == Some(namespace))
                    .map(|kc| ObjectRef::from_obj(&**kc)),
            );
        }
        out
    }

    /// The Kubeconfigs of the namespace, and every one that distributes.
    pub fn of_namespace(&self, namespace: &str) -> Vec<ObjectRef<Kubeconfig>> {
        self.kubeconfigs
            .state()
            .iter()
            .filter(|kc| {
                kc.namespace().as_deref() == Some(namespace) || kc.spec.distribution.is_some()
            })
            .map(|kc| ObjectRef::from_obj(&**kc))
            .collect()
    }

    fn readers(&self, key: (String, String), reads: ReadsFn) -> Vec<ObjectRef<Kubeconfig>> {
        let mut out = Vec::new();
        for a in self.authorities.state() {
            if reads(&a.spec.config, a.namespace().as_deref()).contains(&key) {
                out.extend(self.users_of(
                    AuthorityKind::Authority,
                    a.namespace().as_deref(),
                    &a.name_any(),
                ));
            }
        }
        for a in self.cluster_authorities.state() {
            if reads(&a.spec.config, None).contains(&key) {
                out.extend(self.users_of(AuthorityKind::ClusterAuthority, None, &a.name_any()));
            }
        }
        out
    }
}

/// The Kubeconfigs that use an authority. Pure.
pub fn users_of(
    kubeconfigs: &[Arc<Kubeconfig>],
    default: Option<&AuthorityRef>,
    kind: AuthorityKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<Kubeconfig>> {
    kubeconfigs
        .iter()
        .filter(|kc| {
            let ns = kc.namespace().unwrap_or_default();
            authority_ref(kc, default).is_some_and(|r| refers_to(r, &ns, kind, namespace, name))
        })
        .map(|kc| ObjectRef::from_obj(&**kc))
        .collect()
}

/// The generation each object was last seen at: tells a change of its spec (or its coming or
/// going) from a change of its status alone.
#[derive(Default)]
pub struct SpecChanges(Mutex<HashMap<String, Option<i64>>>);

impl SpecChanges {
    /// Whether `object` (`present`: still in the cache, so not deleted) changed more than its
    /// status since last seen.
    pub fn changed<K: kube::Resource>(&self, object: &K, present: bool) -> bool {
        let key = object.meta().uid.clone().unwrap_or_default();
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if !present {
            seen.remove(&key);
            return true;
        }
        let generation = object.meta().generation;
        seen.insert(key, generation) != Some(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    fn store<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let (store, mut writer) = reflector::store();
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        store
    }

    fn kubeconfig(
        ns: &str,
        name: &str,
        authority: serde_json::Value,
        extra: serde_json::Value,
    ) -> Kubeconfig {
        let mut spec = json!({"username": name, "validity": "1h", "secretRef": {"name": name}});
        if !authority.is_null() {
            spec["authorityRef"] = authority;
        }
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
            "spec": spec,
        }))
        .unwrap()
    }

    fn names(refs: Vec<ObjectRef<Kubeconfig>>) -> Vec<String> {
        let mut out: Vec<String> = refs
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        out.sort();
        out
    }

    fn dependents() -> Dependents {
        let authority: Authority = serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
            "metadata": {"name": "ca", "namespace": "a"},
            "spec": {"server": "https://x", "signer": {"caSecretRef": {"name": "ca-key"}}}}))
        .unwrap();
        let cluster: ClusterAuthority = serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "ClusterAuthority",
            "metadata": {"name": "shared"},
            "spec": {"server": "https://x", "signer": {"caSecretRef": {"name": "root", "namespace": "system"}},
                "caBundle": {"configMapRef": {"name": "bundle", "namespace": "system"}}}}))
        .unwrap();
        Dependents {
            kubeconfigs: store(vec![
                kubeconfig("a", "own", json!({"name": "ca"}), json!({})),
                kubeconfig("b", "same-name-elsewhere", json!({"name": "ca"}), json!({})),
                kubeconfig(
                    "b",
                    "shared",
                    json!({"kind": "ClusterAuthority", "name": "shared"}),
                    json!({}),
                ),
                kubeconfig("c", "default", serde_json::Value::Null, json!({})),
                kubeconfig(
                    "d",
                    "copies",
                    json!({"name": "ca"}),
                    json!({"distribution": {"namespaceSelector": {}}}),
                ),
            ]),
            authorities: store(vec![authority]),
            cluster_authorities: store(vec![cluster]),
            default: Some(AuthorityRef {
                kind: AuthorityKind::ClusterAuthority,
                name: "shared".into(),
            }),
        }
    }

    #[test]
    fn an_authority_brings_back_only_its_own_users() {
        let d = dependents();
        assert_eq!(
            names(d.users_of(AuthorityKind::Authority, Some("a"), "ca")),
            ["a/own"],
            "an Authority serves its own namespace only"
        );
        assert_eq!(
            names(d.users_of(AuthorityKind::ClusterAuthority, None, "shared")),
            ["b/shared", "c/default"],
            "a ClusterAuthority, named or the default"
        );
    }

    #[test]
    fn a_secret_or_config_map_brings_back_the_users_of_the_authorities_that_read_it() {
        let d = dependents();
        assert_eq!(names(d.of_secret("a", "ca-key")), ["a/own"]);
        assert!(
            d.of_secret("b", "ca-key").is_empty(),
            "another namespace's Secret"
        );
        assert_eq!(
            names(d.of_secret("system", "root")),
            ["b/shared", "c/default"]
        );
        assert_eq!(
            names(d.of_config_map("system", "bundle")),
            ["b/shared", "c/default"]
        );
        assert_eq!(
            names(d.of_config_map("b", ROOT_CA_CONFIG_MAP)),
            ["b/same-name-elsewhere", "b/shared"],
            "the cluster's CA bundle brings back its namespace"
        );
    }

    #[test]
    fn a_namespace_brings_back_its_own_and_every_distributing_kubeconfig() {
        let d = dependents();
        assert_eq!(
            names(d.of_namespace("b")),
            ["b/same-name-elsewhere", "b/shared", "d/copies"]
        );
    }

    #[test]
    fn only_a_change_of_spec_or_presence_counts() {
        let seen = SpecChanges::default();
        let mut kc = kubeconfig("a", "x", serde_json::Value::Null, json!({}));
        kc.metadata.generation = Some(1);
        assert!(seen.changed(&kc, true), "first seen");
        assert!(!seen.changed(&kc, true), "a status change");
        kc.metadata.generation = Some(2);
        assert!(seen.changed(&kc, true), "a spec change");
        assert!(seen.changed(&kc, false), "gone");
        assert!(seen.changed(&kc, true), "back");
    }
}
