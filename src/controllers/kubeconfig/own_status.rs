//! The status this controller last gave each Kubeconfig, until the watch brings it back.
//!
//! The status is the controller's alone (one field manager, one leader), so the status it last
//! wrote is the Kubeconfig's status. The cache has it only once the watch delivers the write,
//! milliseconds later; a reconcile that runs meanwhile (brought by another event) would decide
//! from the status before. That made a forced renewal happen twice: the second reconcile did
//! not yet see `renewRequestedAt` recorded. Every reconcile therefore starts from the cached
//! Kubeconfig with its last written status ([`OwnStatus::latest`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{ResourceExt, runtime::watcher};

use crate::api::{Kubeconfig, KubeconfigStatus};

/// Longer than any watch lags behind a write: an entry whose write never came back (the
/// watch relisted past it, or the object went) is dropped then.
const KEPT_FOR: Duration = Duration::from_secs(60);

/// The entries are dropped no later than when their number has doubled since the last prune.
const PRUNE_AT_LEAST: usize = 1024;

#[derive(Default)]
pub struct OwnStatus(Mutex<Writes>);

#[derive(Default)]
struct Writes {
    /// By Kubeconfig UID: the status written, the resourceVersion it made, when.
    by_uid: HashMap<String, Written>,
    prune_at: usize,
}

struct Written {
    status: Arc<KubeconfigStatus>,
    resource_version: Option<String>,
    at: Instant,
}

impl OwnStatus {
    /// The controller wrote `status` to the Kubeconfig `uid`, which made `resource_version`.
    pub fn record(&self, uid: &str, status: KubeconfigStatus, resource_version: Option<String>) {
        self.record_at(uid, status, resource_version, Instant::now());
    }

    fn record_at(
        &self,
        uid: &str,
        status: KubeconfigStatus,
        resource_version: Option<String>,
        at: Instant,
    ) {
        let Ok(mut writes) = self.0.lock() else {
            return;
        };
        if writes.by_uid.len() >= writes.prune_at.max(PRUNE_AT_LEAST) {
            writes
                .by_uid
                .retain(|_, w| at.duration_since(w.at) < KEPT_FOR);
            writes.prune_at = 2 * writes.by_uid.len();
        }
        writes.by_uid.insert(
            uid.to_string(),
            Written {
                status: Arc::new(status),
                resource_version,
                at,
            },
        );
    }

    /// Follows the Kubeconfig watch: the write is forgotten once the cache has it (the event
    /// of its resourceVersion, or any event with that status), or the Kubeconfig is gone.
    pub fn saw(&self, event: &watcher::Event<Kubeconfig>) {
        let (watcher::Event::Apply(kc)
        | watcher::Event::InitApply(kc)
        | watcher::Event::Delete(kc)) = event
        else {
            return;
        };
        let (Some(uid), Ok(mut writes)) = (kc.uid(), self.0.lock()) else {
            return;
        };
        let caught_up = writes.by_uid.get(&uid).is_some_and(|w| {
            matches!(event, watcher::Event::Delete(_))
                || (w.resource_version.is_some() && w.resource_version == kc.resource_version())
                || kc.status.as_ref() == Some(&*w.status)
        });
        if caught_up {
            writes.by_uid.remove(&uid);
        }
    }

    /// `kc` as the cache has it, with the status last written to it when the cache does not
    /// have that yet.
    pub fn latest(&self, kc: Arc<Kubeconfig>) -> Arc<Kubeconfig> {
        self.latest_at(kc, Instant::now())
    }

    fn latest_at(&self, kc: Arc<Kubeconfig>, now: Instant) -> Arc<Kubeconfig> {
        let written = kc.uid().and_then(|uid| {
            let writes = self.0.lock().ok()?;
            let w = writes.by_uid.get(&uid)?;
            (now.duration_since(w.at) < KEPT_FOR).then(|| w.status.clone())
        });
        match written {
            Some(status) if kc.status.as_ref() != Some(&*status) => {
                let mut newer = (*kc).clone();
                newer.status = Some((*status).clone());
                Arc::new(newer)
            }
            _ => kc,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map_or(0, |w| w.by_uid.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(uid: &str, resource_version: &str, renewed: Option<&str>) -> Kubeconfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": "kc", "namespace": "ns", "uid": uid, "resourceVersion": resource_version},
            "spec": {"username": "u", "validity": "1h", "secretRef": {"name": "s"}},
            "status": {"renewRequestedAt": renewed},
        }))
        .unwrap()
    }

    fn renewed(kc: &Kubeconfig) -> Option<&str> {
        kc.status.as_ref()?.renew_requested_at.as_deref()
    }

    #[test]
    fn a_reconcile_before_the_watch_brings_the_write_sees_the_status_written() {
        let own = OwnStatus::default();
        let before = Arc::new(kc("u1", "1", None));
        let written = kc("u1", "2", Some("t1"));
        own.record("u1", written.status.clone().unwrap(), Some("2".into()));
        assert_eq!(renewed(&own.latest(before.clone())), Some("t1"));
        // Another Kubeconfig is not concerned.
        assert_eq!(renewed(&own.latest(Arc::new(kc("u2", "1", None)))), None);
        // An event from before the write is no catching up.
        own.saw(&watcher::Event::Apply(kc("u1", "1", None)));
        assert_eq!(renewed(&own.latest(before.clone())), Some("t1"));
        // The write's own event is: from then on, the cache says.
        own.saw(&watcher::Event::Apply(written));
        assert_eq!(own.len(), 0);
        assert_eq!(renewed(&own.latest(before)), None);
    }

    #[test]
    fn an_event_with_the_status_written_or_a_deletion_also_catches_up() {
        let own = OwnStatus::default();
        own.record("u1", kc("u1", "2", Some("t1")).status.unwrap(), None);
        own.saw(&watcher::Event::InitApply(kc("u1", "7", Some("t1"))));
        assert_eq!(own.len(), 0, "a relist that has the status");
        own.record("u1", kc("u1", "2", Some("t2")).status.unwrap(), None);
        own.saw(&watcher::Event::Delete(kc("u1", "1", None)));
        assert_eq!(own.len(), 0, "deleted");
    }

    #[test]
    fn a_write_that_never_comes_back_is_dropped_after_a_minute() {
        let own = OwnStatus::default();
        let start = Instant::now();
        own.record_at(
            "old",
            kc("old", "2", Some("t")).status.unwrap(),
            None,
            start,
        );
        let cached = Arc::new(kc("old", "1", None));
        assert_eq!(renewed(&own.latest_at(cached.clone(), start)), Some("t"));
        assert_eq!(renewed(&own.latest_at(cached, start + KEPT_FOR)), None);
        // Entries never pile up: at the latest when their number doubled, the old ones go.
        let later = start + KEPT_FOR;
        for i in 0..2 * PRUNE_AT_LEAST {
            own.record_at(&format!("u{i}"), KubeconfigStatus::default(), None, later);
        }
        assert!(own.len() <= 2 * PRUNE_AT_LEAST, "{}", own.len());
        assert!(!own.0.lock().unwrap().by_uid.contains_key("old"));
    }
}
