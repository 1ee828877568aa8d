//! What a term's Kubeconfig watch lets through (the caches themselves are
//! [`crate::client::watch::reflect`]).

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Mutex,
};

use kube::runtime::watcher;

use crate::api::{Kubeconfig, ORPHAN_TARGET_ANNOTATION, RENEW_ANNOTATION};

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What brings a Kubeconfig back through its own watch: anything but its status (and the
/// annotations it does not read). The status is the controller's own, and each write of it
/// would otherwise bring the object back once more for nothing (a third of the reconciles of
/// an issuance; the renewal is scheduled).
pub fn not_status(kc: &Kubeconfig) -> u64 {
    let meta = kube::Resource::meta(kc);
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    hash_of((
        meta.generation,
        &meta.finalizers,
        meta.deletion_timestamp.is_some(),
        annotation(RENEW_ANNOTATION),
        annotation(ORPHAN_TARGET_ANNOTATION),
    ))
}

/// The [`not_status`] of each Kubeconfig as it last came through, to let only its changes
/// through. kube-runtime's `predicate_filter` does the same with a key of three strings per
/// object (about 180 bytes, and kept an hour after the object goes); here both the key (a hash
/// of the UID) and the value are a `u64`, and a deleted Kubeconfig's entry goes with it. Two
/// UIDs of the same hash (about one chance in 10^9 at 100,000 Kubeconfigs) would at worst let
/// a status-only change through: one reconcile that writes nothing.
#[derive(Default)]
pub struct Changes(Mutex<Seen>);

#[derive(Default)]
struct Seen {
    by_uid: HashMap<u64, u64>,
    /// The UIDs listed during a relist: what the relist did not list was deleted meanwhile.
    relisting: Option<HashSet<u64>>,
}

fn uid_of(kc: &Kubeconfig) -> u64 {
    hash_of(kc.metadata.uid.as_deref().unwrap_or_default())
}

impl Changes {
    /// Whether `kc` comes through: the first time, and when its [`not_status`] changed.
    pub fn changed(&self, kc: &Kubeconfig) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        let hash = not_status(kc);
        seen.by_uid.insert(uid_of(kc), hash) != Some(hash)
    }

    /// Follows the watch (before the cache takes the event): a deleted Kubeconfig is
    /// forgotten, and so is, at the end of a relist, one the relist did not find.
    pub fn saw(&self, event: &watcher::Event<Kubeconfig>) {
        let Ok(mut seen) = self.0.lock() else {
            return;
        };
        match event {
            watcher::Event::Delete(kc) => {
                seen.by_uid.remove(&uid_of(kc));
            }
            watcher::Event::Init => seen.relisting = Some(HashSet::new()),
            watcher::Event::InitApply(kc) => {
                let uid = uid_of(kc);
                if let Some(listed) = seen.relisting.as_mut() {
                    listed.insert(uid);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listed) = seen.relisting.take() {
                    seen.by_uid.retain(|uid, _| listed.contains(uid));
                }
            }
            watcher::Event::Apply(_) => {}
        }
    }

    /// How many Kubeconfigs are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map_or(0, |seen| seen.by_uid.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(uid: &str, generation: i64, ready: bool) -> Kubeconfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "generation": generation},
            "spec": {"username": "u", "validity": "1h", "secretRef": {"name": "s"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                "reason": "Issued", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap()
    }

    #[test]
    fn only_changes_other_than_the_status_come_through() {
        let changes = Changes::default();
        assert!(changes.changed(&kc("a", 1, false)), "first seen");
        assert!(!changes.changed(&kc("a", 1, true)), "its status only");
        assert!(changes.changed(&kc("a", 2, true)), "a new generation");
        assert!(changes.changed(&kc("b", 2, true)), "another Kubeconfig");
        let mut renew = kc("a", 2, true);
        renew
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(RENEW_ANNOTATION.into(), "now".into());
        assert!(changes.changed(&renew), "a forced renewal");
        // A new object under the same name is another UID: it comes through.
        assert!(changes.changed(&kc("a2", 2, true)));
    }

    #[test]
    fn a_deleted_kubeconfig_is_forgotten_and_so_is_one_a_relist_misses() {
        let changes = Changes::default();
        for uid in ["a", "b", "c"] {
            changes.changed(&kc(uid, 1, true));
        }
        changes.saw(&watcher::Event::Delete(kc("a", 1, true)));
        assert_eq!(changes.len(), 2);
        // "c" went while the watch was down: the relist does not list it.
        changes.saw(&watcher::Event::Init);
        for event in [
            watcher::Event::InitApply(kc("b", 1, true)),
            watcher::Event::InitApply(kc("d", 1, true)),
        ] {
            changes.saw(&event);
            if let watcher::Event::InitApply(kc) = &event {
                changes.changed(kc);
            }
        }
        changes.saw(&watcher::Event::InitDone);
        assert_eq!(changes.len(), 2, "b and d");
        assert!(!changes.changed(&kc("b", 1, true)));
        assert!(changes.changed(&kc("c", 1, true)), "c forgotten");
    }
}
