//! What the controller keeps of each Secret it manages (a Kubeconfig's Secret and its copies):
//! enough to plan, never the data. At ten thousand Secrets the data, and even the full
//! metadata of `k8s-openapi`'s types, would be most of the controller's memory (`make bench`).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use base64::Engine;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    ResourceExt,
    runtime::{
        reflector::{Lookup, ObjectRef},
        watcher,
    },
};
use kubeconfig_authority_pki::{inspect_certificate, kubeconfig as kc_file, parse_certificates};
use uuid::Uuid;

use super::credential::{self, Held};
use crate::api::{
    ARGOCD_CLUSTER, ARGOCD_SECRET_TYPE_LABEL, CREDENTIAL_ANNOTATION, DATA_ANNOTATION,
    INPUTS_ANNOTATION, KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL,
};

/// A managed Secret, as the cache keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedSecret {
    pub name: String,
    pub namespace: String,
    /// The UID of the owner that controls it (its Kubeconfig; copies have none).
    pub controller_uid: Option<Uuid>,
    /// `<namespace>/<name>` of its Kubeconfig.
    pub kubeconfig: Option<String>,
    /// Its Kubeconfig's UID (label).
    pub kubeconfig_uid: Option<Uuid>,
    pub inputs_digest: Option<String>,
    /// The data digest the controller wrote.
    pub data_digest: Option<String>,
    /// The data (and credential record) still match that digest: nobody edited them.
    pub intact: bool,
    /// The credential it holds, as recorded when written.
    pub held: Option<Held>,
    /// It is an Argo CD cluster Secret (`spec.argoCD`), not the Secret or a copy of it.
    pub argo_cd: bool,
    pub resource_version: String,
}

impl ManagedSecret {
    /// `read_key`: for a Secret written before credentials were recorded, the key whose
    /// kubeconfig to read the credential from. The cache passes none: such a Secret then has
    /// no `held`, and the reconciler reads the live one.
    pub fn of(secret: &Secret, read_key: Option<&str>) -> Self {
        let annotations = secret.annotations();
        let record = annotations.get(CREDENTIAL_ANNOTATION);
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let data_digest = annotations.get(DATA_ANNOTATION).cloned();
        let held = match record {
            Some(record) => serde_json::from_str(record).ok(),
            None => read_key.and_then(|key| data.get(key)).and_then(held_under),
        };
        Self {
            name: ResourceExt::name_any(secret),
            namespace: ResourceExt::namespace(secret).unwrap_or_default(),
            controller_uid: secret
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .and_then(|o| uid(&o.uid)),
            kubeconfig: annotations.get(KUBECONFIG_ANNOTATION).cloned(),
            kubeconfig_uid: secret
                .labels()
                .get(KUBECONFIG_UID_LABEL)
                .and_then(|u| uid(u)),
            inputs_digest: annotations.get(INPUTS_ANNOTATION).cloned(),
            intact: data_digest.as_deref()
                == Some(digest_of(data, record.map(String::as_str)).as_str()),
            data_digest,
            held,
            argo_cd: secret
                .labels()
                .get(ARGOCD_SECRET_TYPE_LABEL)
                .map(String::as_str)
                == Some(ARGOCD_CLUSTER),
            resource_version: ResourceExt::resource_version(secret).unwrap_or_default(),
        }
    }
}

/// A UID as the cache keeps it: the 16 bytes of the UUID the API server gives every object,
/// not its 36 characters (two per managed Secret and one in the index were a tenth of the
/// controller's memory per Kubeconfig). A value that is no UUID, which no object the API
/// server made has, is kept as none: it matches no Kubeconfig.
pub fn uid(value: &str) -> Option<Uuid> {
    Uuid::try_parse(value).ok()
}

/// Whether `kept` (as [`uid`] keeps it) is the UID `value`.
pub fn is_uid(kept: Option<Uuid>, value: &str) -> bool {
    kept.is_some_and(|kept| Some(kept) == uid(value))
}

impl From<Secret> for ManagedSecret {
    fn from(secret: Secret) -> Self {
        Self::of(&secret, None)
    }
}

impl Lookup for ManagedSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(self.name.as_str().into())
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(self.namespace.as_str().into())
    }

    /// None: the cache's key need not repeat it.
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// The resourceVersion of each managed Secret as the controller last wrote it. The watch
/// event of the controller's own write is no news: it brings nothing back (at ten thousand
/// Kubeconfigs that second reconcile per issuance was a tenth of the controller's CPU,
/// `make bench`). Any other change has another resourceVersion and does.
#[derive(Debug, Default)]
pub struct OwnWrites(Mutex<HashMap<(String, String), String>>);

impl OwnWrites {
    pub fn record(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        if let (Some(rv), Ok(mut writes)) = (resource_version, self.0.lock()) {
            writes.insert((namespace.to_string(), name.to_string()), rv);
        }
    }

    /// Whether this watched state of a Secret is the controller's own last write of it. Each
    /// write is forgotten at the first event about its Secret, its echo or not.
    pub fn is_echo(&self, secret: &ManagedSecret) -> bool {
        let Ok(mut writes) = self.0.lock() else {
            return false;
        };
        writes
            .remove(&(secret.namespace.clone(), secret.name.clone()))
            .is_some_and(|rv| rv == secret.resource_version)
    }
}

/// The managed Secrets by the UID of their Kubeconfig (its Secret, its copies, its Argo CD
/// cluster Secret). Every reconcile asks for its own; a scan of every managed Secret per
/// reconcile was a tenth of the controller's CPU at ten thousand Kubeconfigs (`make bench`).
/// It follows the watch's events as the cache does (a relist builds it anew), and a lookup
/// takes each Secret from the cache. One sorted set of (Kubeconfig UID, namespace, name):
/// a map of sets took about 550 bytes per Kubeconfig, most of the index.
#[derive(Default)]
pub struct ByKubeconfig(Mutex<Index>);

type Refs = BTreeSet<(Uuid, String, String)>;

#[derive(Default)]
struct Index {
    current: Refs,
    /// Filled during a relist, in place of `current` once it completes.
    relisting: Option<Refs>,
}

impl ByKubeconfig {
    /// Follows one event of the managed Secrets' watch.
    pub fn saw(&self, event: &watcher::Event<ManagedSecret>) {
        let Ok(mut index) = self.0.lock() else {
            return;
        };
        let key = |s: &ManagedSecret| {
            s.kubeconfig_uid
                .map(|uid| (uid, s.namespace.clone(), s.name.clone()))
        };
        match event {
            watcher::Event::Init => index.relisting = Some(Refs::new()),
            watcher::Event::InitApply(s) => {
                if let (Some(key), Some(refs)) = (key(s), index.relisting.as_mut()) {
                    refs.insert(key);
                }
            }
            watcher::Event::InitDone => {
                if let Some(refs) = index.relisting.take() {
                    index.current = refs;
                }
            }
            watcher::Event::Apply(s) => {
                if let Some(key) = key(s) {
                    index.current.insert(key);
                }
            }
            watcher::Event::Delete(s) => {
                if let Some(key) = key(s) {
                    index.current.remove(&key);
                }
            }
        }
    }

    /// The Secrets of the Kubeconfig `uid` that `keep` selects, as `cached` (the cache)
    /// holds them now.
    pub fn of(
        &self,
        uid: &str,
        cached: impl Fn(&ObjectRef<ManagedSecret>) -> Option<Arc<ManagedSecret>>,
        keep: impl Fn(&ManagedSecret) -> bool,
    ) -> Vec<Arc<ManagedSecret>> {
        let (Some(uid), Ok(index)) = (self::uid(uid), self.0.lock()) else {
            return Vec::new();
        };
        let from = (uid, String::new(), String::new());
        index
            .current
            .range(from..)
            .take_while(|(u, _, _)| *u == uid)
            .filter_map(|(_, namespace, name)| cached(&ObjectRef::new(name).within(namespace)))
            .filter(|s| s.kubeconfig_uid == Some(uid) && keep(s))
            .collect()
    }
}

/// The digest of a Secret's data and, when there is one, its credential record.
pub fn digest_of(data: &BTreeMap<String, ByteString>, record: Option<&str>) -> String {
    let mut bytes = Vec::new();
    for (k, v) in data {
        bytes.extend_from_slice(&(k.len() as u64).to_be_bytes());
        bytes.extend_from_slice(k.as_bytes());
        bytes.extend_from_slice(&(v.0.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&v.0);
    }
    if let Some(record) = record {
        bytes.extend_from_slice(CREDENTIAL_ANNOTATION.as_bytes());
        bytes.extend_from_slice(record.as_bytes());
    }
    digest(&bytes)
}

/// A short SHA-256 digest, URL-safe base64.
pub fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..18])
}

/// The credential of the kubeconfig in one value of a Secret.
fn held_under(value: &ByteString) -> Option<Held> {
    let parsed = kc_file::parse(std::str::from_utf8(&value.0).ok()?).ok()?;
    match (parsed.client_certificate_pem, parsed.token) {
        (Some(pem), _) => {
            let der = parse_certificates(&pem).ok()?;
            Some(Held::from(inspect_certificate(der.first()?).ok()?))
        }
        (None, Some(token)) => credential::token_held(&token),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, resource_version: &str) -> ManagedSecret {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": resource_version},
        }))
        .unwrap();
        ManagedSecret::from(secret)
    }

    #[test]
    fn only_the_echo_of_the_last_write_is_no_news() {
        let writes = OwnWrites::default();
        writes.record("ns", "a", Some("7".into()));
        writes.record("ns", "b", Some("8".into()));
        // Someone else's change after ours: news, and our write is forgotten.
        assert!(!writes.is_echo(&secret("a", "9")));
        assert!(!writes.is_echo(&secret("a", "7")));
        // Our own write coming back: no news, once.
        assert!(writes.is_echo(&secret("b", "8")));
        assert!(!writes.is_echo(&secret("b", "8")));
        // Never written by us, or written with no resourceVersion known.
        writes.record("ns", "c", None);
        assert!(!writes.is_echo(&secret("c", "1")));
    }

    const U1: &str = "00000000-0000-4000-8000-000000000001";
    const U2: &str = "00000000-0000-4000-8000-000000000002";
    const U3: &str = "00000000-0000-4000-8000-000000000003";
    const U9: &str = "00000000-0000-4000-8000-000000000009";

    fn owned(namespace: &str, name: &str, uid: &str) -> ManagedSecret {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1",
                "labels": {KUBECONFIG_UID_LABEL: uid}},
        }))
        .unwrap();
        ManagedSecret::from(secret)
    }

    #[test]
    fn the_index_by_kubeconfig_follows_the_watch_and_answers_from_the_cache() {
        let index = ByKubeconfig::default();
        let cache: std::cell::RefCell<HashMap<ObjectRef<ManagedSecret>, Arc<ManagedSecret>>> =
            Default::default();
        let put = |s: ManagedSecret| {
            cache
                .borrow_mut()
                .insert(ObjectRef::new(&s.name).within(&s.namespace), Arc::new(s));
        };
        let names = |uid: &str, keep: &dyn Fn(&ManagedSecret) -> bool| {
            let mut names: Vec<String> = index
                .of(uid, |r| cache.borrow().get(r).cloned(), keep)
                .iter()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .collect();
            names.sort();
            names
        };
        for s in [
            owned("a", "kc", U1),
            owned("b", "kc", U1),
            owned("a", "other", U2),
        ] {
            put(s.clone());
            index.saw(&watcher::Event::Apply(s));
        }
        assert_eq!(names(U1, &|_| true), ["a/kc", "b/kc"]);
        assert_eq!(names(U1, &|s| s.namespace != "a"), ["b/kc"]);
        assert!(names(U3, &|_| true).is_empty());
        // A deletion leaves the index.
        index.saw(&watcher::Event::Delete(owned("b", "kc", U1)));
        assert_eq!(names(U1, &|_| true), ["a/kc"]);
        // A relist replaces it whole: what went while the watch was down goes with it.
        index.saw(&watcher::Event::Init);
        index.saw(&watcher::Event::InitApply(owned("a", "other", U2)));
        assert_eq!(
            names(U1, &|_| true),
            ["a/kc"],
            "the old index serves until the list ends"
        );
        index.saw(&watcher::Event::InitDone);
        assert!(names(U1, &|_| true).is_empty());
        assert_eq!(names(U2, &|_| true), ["a/other"]);
        // The cache is the truth: an indexed Secret it no longer holds, or holds for another
        // Kubeconfig, is not answered.
        put(owned("a", "other", U9));
        assert!(names(U2, &|_| true).is_empty());
        // A label that is no UUID matches no Kubeconfig, not even one of that "UID".
        let odd = owned("a", "odd", "not-a-uid");
        assert_eq!(odd.kubeconfig_uid, None);
        index.saw(&watcher::Event::Apply(odd.clone()));
        put(odd);
        assert!(names("not-a-uid", &|_| true).is_empty());
    }
}
