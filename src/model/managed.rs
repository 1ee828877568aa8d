//! What the controller keeps of each Secret it manages (a Kubeconfig's Secret and its copies):
//! enough to plan, never the data. At ten thousand Secrets the data, and even the full
//! metadata of `k8s-openapi`'s types, would be most of the controller's memory (`make bench`).

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
    sync::{Arc, Mutex, RwLock},
};

use base64::Engine;
use hashbrown::HashTable;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{ResourceExt, runtime::watcher};
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
    pub inputs_digest: Option<Digest>,
    /// The data digest the controller wrote.
    pub data_digest: Option<Digest>,
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
        let data_digest = annotations
            .get(DATA_ANNOTATION)
            .and_then(|d| Digest::parse(d));
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
            inputs_digest: annotations
                .get(INPUTS_ANNOTATION)
                .and_then(|d| Digest::parse(d)),
            intact: data_digest == Some(digest_of(data, record.map(String::as_str))),
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

/// The managed Secrets as their watch shows them, found by namespace and name or by the UID of
/// their Kubeconfig (its Secret, its copies, its Argo CD cluster Secret): every reconcile asks
/// for its own, and a scan per reconcile was a tenth of the controller's CPU at ten thousand
/// Kubeconfigs (`make bench`).
///
/// Each Secret is kept once, and both ways of finding it hold only a pointer to it. kube-runtime's
/// store keyed each object by a reference of four strings, and an index beside it repeated the
/// namespace and name: together 430 bytes per Kubeconfig, more than the summary itself (100,000
/// Kubeconfigs in `make bench`). A relist fills a new set, which replaces the old one whole when
/// the list completes: what went while the watch was down goes with it.
pub struct ManagedSecrets {
    state: RwLock<State>,
    /// Whether the watch has listed once.
    filled: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    current: Secrets,
    relisting: Option<Secrets>,
}

/// Two tables of pointers: by the hash of namespace and name (one Secret each), and by the
/// hash of the Kubeconfig UID (as many as it has).
#[derive(Default)]
struct Secrets {
    by_name: HashTable<Arc<ManagedSecret>>,
    by_kubeconfig: HashTable<Arc<ManagedSecret>>,
}

impl Default for ManagedSecrets {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            filled: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// The hashes the in-process tables use (here and in `client::watch`); the same for the whole
/// run, never seen outside it.
pub(crate) fn hash(key: impl std::hash::Hash) -> u64 {
    static HASHER: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    HASHER.hash_one(key)
}

fn name_hash(s: &ManagedSecret) -> u64 {
    hash((s.namespace.as_str(), s.name.as_str()))
}

/// Only a Secret with a Kubeconfig UID is in `by_kubeconfig`.
fn uid_hash(s: &ManagedSecret) -> u64 {
    hash(s.kubeconfig_uid)
}

impl Secrets {
    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<ManagedSecret>> {
        self.by_name.find(hash((namespace, name)), |s| {
            s.namespace == namespace && s.name == name
        })
    }

    fn of(&self, uid: Uuid) -> impl Iterator<Item = &Arc<ManagedSecret>> {
        self.by_kubeconfig
            .iter_hash(hash(Some(uid)))
            .filter(move |s| s.kubeconfig_uid == Some(uid))
    }

    fn insert(&mut self, secret: Arc<ManagedSecret>) {
        self.remove(&secret.namespace, &secret.name);
        if secret.kubeconfig_uid.is_some() {
            self.by_kubeconfig
                .insert_unique(uid_hash(&secret), secret.clone(), |s| uid_hash(s));
        }
        self.by_name
            .insert_unique(name_hash(&secret), secret, |s| name_hash(s));
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Ok(entry) = self.by_name.find_entry(hash((namespace, name)), |s| {
            s.namespace == namespace && s.name == name
        }) else {
            return;
        };
        let (gone, _) = entry.remove();
        if let Ok(entry) = self
            .by_kubeconfig
            .find_entry(uid_hash(&gone), |s| Arc::ptr_eq(s, &gone))
        {
            entry.remove();
        }
    }
}

impl ManagedSecrets {
    /// Takes one event of the managed Secrets' watch; gives the Secrets whose Kubeconfigs it
    /// concerns, each once this cache holds what it says. The first list's come at once (a
    /// reconcile waits for the cache to fill); a relist's when it is complete and replaces the
    /// old set (a reconcile reads the set in place), with the Secrets it no longer found (deleted
    /// while the watch was away: their Kubeconfigs repair them).
    pub fn saw(&self, event: watcher::Event<ManagedSecret>) -> Vec<Arc<ManagedSecret>> {
        let Ok(mut state) = self.state.write() else {
            return Vec::new();
        };
        let relist = *self.filled.borrow();
        match event {
            watcher::Event::Init => {
                state.relisting = Some(Secrets::default());
                Vec::new()
            }
            watcher::Event::InitApply(s) => {
                let s = Arc::new(s);
                if let Some(relisting) = state.relisting.as_mut() {
                    relisting.insert(s.clone());
                }
                if relist { Vec::new() } else { vec![s] }
            }
            watcher::Event::InitDone => {
                let Some(secrets) = state.relisting.take() else {
                    return Vec::new();
                };
                let old = std::mem::replace(&mut state.current, secrets);
                self.filled.send_replace(true);
                if !relist {
                    return Vec::new();
                }
                let listed = state.current.by_name.iter();
                let vanished = old
                    .by_name
                    .iter()
                    .filter(|s| state.current.get(&s.namespace, &s.name).is_none());
                listed.chain(vanished).cloned().collect()
            }
            watcher::Event::Apply(s) => {
                let s = Arc::new(s);
                state.current.insert(s.clone());
                vec![s]
            }
            watcher::Event::Delete(s) => {
                state.current.remove(&s.namespace, &s.name);
                vec![Arc::new(s)]
            }
        }
    }

    /// The managed Secret `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<ManagedSecret>> {
        let state = self.state.read().ok()?;
        state.current.get(namespace, name).cloned()
    }

    /// The Secrets of the Kubeconfig `uid` that `keep` selects.
    pub fn of(&self, uid: &str, keep: impl Fn(&ManagedSecret) -> bool) -> Vec<Arc<ManagedSecret>> {
        let (Some(uid), Ok(state)) = (self::uid(uid), self.state.read()) else {
            return Vec::new();
        };
        state.current.of(uid).filter(|s| keep(s)).cloned().collect()
    }

    /// Every managed Secret.
    pub fn all(&self) -> Vec<Arc<ManagedSecret>> {
        self.state
            .read()
            .map(|state| state.current.by_name.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the watch has listed once: a reconcile waits for it (`Context::caches_ready`).
    pub fn filled(&self) -> tokio::sync::watch::Receiver<bool> {
        self.filled.subscribe()
    }
}

/// The digest of a Secret's data and, when there is one, its credential record.
pub fn digest_of(data: &BTreeMap<String, ByteString>, record: Option<&str>) -> Digest {
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
    Digest::of(&bytes)
}

/// A short SHA-256 digest, URL-safe base64.
pub fn digest(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

const DIGEST_LEN: usize = 18;

/// A [`digest`] as the cache keeps it: its 18 bytes, not their 24 characters (two per managed
/// Secret). It is written as URL-safe base64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest([u8; DIGEST_LEN]);

impl Digest {
    /// The first 18 bytes of the SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut kept = [0; DIGEST_LEN];
        kept.copy_from_slice(
            &ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..DIGEST_LEN],
        );
        Self(kept)
    }

    /// The digest `text` spells, if it spells one (an annotation can hold anything).
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0; DIGEST_LEN];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(DIGEST_LEN) if text.len() == 24 => Some(Self(bytes)),
            _ => None,
        }
    }

    /// Whether `text` spells this digest.
    pub fn is(&self, text: &str) -> bool {
        Self::parse(text) == Some(*self)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0))
    }
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

    fn owned(namespace: &str, name: &str, uid: &str) -> ManagedSecret {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1",
                "labels": {KUBECONFIG_UID_LABEL: uid}},
        }))
        .unwrap();
        ManagedSecret::from(secret)
    }

    #[test]
    fn managed_secrets_follow_the_watch_by_name_and_by_kubeconfig() {
        let secrets = ManagedSecrets::default();
        let names = |uid: &str, keep: &dyn Fn(&ManagedSecret) -> bool| {
            let mut names: Vec<String> = secrets
                .of(uid, keep)
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
            secrets.saw(watcher::Event::Apply(s));
        }
        assert_eq!(names(U1, &|_| true), ["a/kc", "b/kc"]);
        assert_eq!(names(U1, &|s| s.namespace != "a"), ["b/kc"]);
        assert!(names(U3, &|_| true).is_empty());
        assert_eq!(
            secrets.get("b", "kc").map(|s| s.kubeconfig_uid),
            Some(uid(U1))
        );
        assert!(secrets.get("b", "other").is_none());
        // A deletion leaves both.
        secrets.saw(watcher::Event::Delete(owned("b", "kc", U1)));
        assert_eq!(names(U1, &|_| true), ["a/kc"]);
        assert!(secrets.get("b", "kc").is_none());
        // A Secret that changes Kubeconfig moves: the old one no longer finds it.
        secrets.saw(watcher::Event::Apply(owned("a", "other", U3)));
        assert!(names(U2, &|_| true).is_empty());
        assert_eq!(names(U3, &|_| true), ["a/other"]);
        // A relist replaces the set whole: what went while the watch was down goes with it.
        secrets.saw(watcher::Event::Init);
        secrets.saw(watcher::Event::InitApply(owned("a", "other", U2)));
        assert_eq!(
            names(U1, &|_| true),
            ["a/kc"],
            "the old set serves until the list ends"
        );
        secrets.saw(watcher::Event::InitDone);
        assert!(names(U1, &|_| true).is_empty());
        assert!(secrets.get("a", "kc").is_none());
        assert_eq!(names(U2, &|_| true), ["a/other"]);
        assert_eq!(secrets.all().len(), 1);
        // A label that is no UUID matches no Kubeconfig, not even one of that "UID".
        let odd = owned("a", "odd", "not-a-uid");
        assert_eq!(odd.kubeconfig_uid, None);
        secrets.saw(watcher::Event::Apply(odd));
        assert!(names("not-a-uid", &|_| true).is_empty());
        assert!(secrets.get("a", "odd").is_some());
    }

    #[test]
    fn managed_secrets_are_filled_by_the_first_complete_list() {
        let secrets = ManagedSecrets::default();
        let filled = secrets.filled();
        secrets.saw(watcher::Event::Init);
        secrets.saw(watcher::Event::InitApply(owned("a", "kc", U1)));
        assert!(!*filled.borrow(), "filled before the list ended");
        secrets.saw(watcher::Event::InitDone);
        assert!(*filled.borrow());
    }

    #[test]
    fn a_relist_triggers_once_it_is_complete_and_for_what_it_no_longer_found() {
        let secrets = ManagedSecrets::default();
        let names = |triggers: Vec<Arc<ManagedSecret>>| {
            let mut names: Vec<String> = triggers
                .iter()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .collect();
            names.sort();
            names
        };
        // The first list: at once.
        assert!(secrets.saw(watcher::Event::Init).is_empty());
        let first = secrets.saw(watcher::Event::InitApply(owned("a", "kept", U1)));
        assert_eq!(names(first), ["a/kept"]);
        secrets.saw(watcher::Event::InitApply(owned("a", "deleted", U2)));
        assert!(secrets.saw(watcher::Event::InitDone).is_empty());
        // A relist: nothing until it is complete, then what it listed (as the cache now holds
        // it) and what went while the watch was away.
        secrets.saw(watcher::Event::Init);
        for s in [owned("a", "kept", U1), owned("a", "new", U3)] {
            assert!(secrets.saw(watcher::Event::InitApply(s)).is_empty());
        }
        let done = secrets.saw(watcher::Event::InitDone);
        for s in &done {
            let held = secrets.get(&s.namespace, &s.name);
            assert_eq!(held.is_some(), s.name != "deleted", "{}", s.name);
        }
        assert_eq!(names(done), ["a/deleted", "a/kept", "a/new"]);
        // Events between lists: at once.
        let changed = secrets.saw(watcher::Event::Apply(owned("a", "new", U3)));
        assert_eq!(names(changed), ["a/new"]);
    }

    #[test]
    fn a_digest_is_kept_as_its_bytes_and_anything_else_as_none() {
        let text = digest(b"data");
        let kept = Digest::parse(&text).expect("a digest");
        assert!(kept.is(&text));
        assert_eq!(kept.to_string(), text);
        assert_eq!(kept, Digest::of(b"data"));
        assert!(!kept.is(&digest(b"other data")));
        for odd in [
            "",
            "not a digest",
            &text[1..],
            &format!("{text}A"),
            "!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(Digest::parse(odd), None, "{odd}");
        }
    }
}
