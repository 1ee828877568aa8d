//! The next look at every Ready Kubeconfig (its renewal, or the next check of its copies),
//! outside kube-runtime's scheduler. The scheduler keeps each waiting object in a delay queue
//! and a map, under references of four strings: about 0.8 KiB per Kubeconfig, a fifth of the
//! controller's memory at 100,000 (`make bench`, heaptrack). Here each waiting Kubeconfig has
//! one entry, `namespace/name` with its due second, kept in a map and a sorted set that share
//! the key; the reconcile returns `Action::await_change()`, and a due entry triggers a
//! reconcile through the controller's `reconcile_on`.
//!
//! As in kube-runtime's scheduler, a Kubeconfig waits once: its next wait replaces the one
//! before (a watch event that brings it back early must not start a second chain of looks),
//! and a deleted Kubeconfig's wait goes. Waits are rounded up to the next whole second: never
//! early, so a look never finds its time still ahead and waits again in a loop.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::Stream;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::api::Kubeconfig;

/// `namespace/name` (neither may contain a `/`).
type Key = Arc<str>;

#[derive(Default)]
struct Due {
    /// Each waiting Kubeconfig's Unix second.
    by_object: HashMap<Key, i64>,
    /// The same entries in the order they come due.
    by_time: BTreeSet<(i64, Key)>,
}

impl Due {
    fn insert(&mut self, key: &str, second: i64) {
        match self.by_object.get_key_value(key) {
            Some((_, &old)) if old == second => {}
            Some((shared, &old)) => {
                let shared = shared.clone();
                self.by_time.remove(&(old, shared.clone()));
                self.by_time.insert((second, shared.clone()));
                self.by_object.insert(shared, second);
            }
            None => {
                let shared: Key = key.into();
                self.by_time.insert((second, shared.clone()));
                self.by_object.insert(shared, second);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some((shared, second)) = self.by_object.remove_entry(key) {
            self.by_time.remove(&(second, shared));
        }
    }
}

#[derive(Default)]
pub struct Renewals {
    due: Mutex<Due>,
    /// Told of an entry sooner than all others, so that the waiting stream looks again.
    sooner: Notify,
}

fn key_of(kc: &Kubeconfig) -> String {
    format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any())
}

impl Renewals {
    /// Brings `kc` back after `wait`, at the first whole second not before then, instead of
    /// when it was to come back.
    pub fn after(&self, kc: &Kubeconfig, wait: Duration) {
        self.at(&key_of(kc), OffsetDateTime::now_utc() + wait);
    }

    /// `kc` no longer waits here (it was deleted, or waits in kube-runtime's scheduler).
    pub fn forget(&self, kc: &Kubeconfig) {
        self.forget_key(&key_of(kc));
    }

    fn forget_key(&self, key: &str) {
        if let Ok(mut due) = self.due.lock() {
            due.remove(key);
        }
    }

    fn at(&self, key: &str, at: OffsetDateTime) {
        let second = at.unix_timestamp() + i64::from(at.nanosecond() > 0);
        let Ok(mut due) = self.due.lock() else {
            return;
        };
        let soonest = due.by_time.first().is_none_or(|first| second < first.0);
        due.insert(key, second);
        drop(due);
        if soonest {
            self.sooner.notify_one();
        }
    }

    /// Takes the entries due at `now`, or says when the next one is.
    fn take_due(&self, now: OffsetDateTime) -> Result<Vec<Key>, Option<i64>> {
        let Ok(mut due) = self.due.lock() else {
            return Err(None);
        };
        let now = now.unix_timestamp();
        let mut taken = Vec::new();
        while due.by_time.first().is_some_and(|first| first.0 <= now) {
            if let Some((_, key)) = due.by_time.pop_first() {
                due.by_object.remove(&key);
                taken.push(key);
            }
        }
        if taken.is_empty() {
            return Err(due.by_time.first().map(|first| first.0));
        }
        Ok(taken)
    }

    /// How many Kubeconfigs wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.due.lock().map_or(0, |due| due.by_object.len())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Kubeconfigs whose time has come, as it comes.
    pub fn stream(self: &Arc<Self>) -> impl Stream<Item = ObjectRef<Kubeconfig>> + Send + use<> {
        let renewals = self.clone();
        futures::stream::unfold(Vec::<Key>::new(), move |mut ready| {
            let renewals = renewals.clone();
            async move {
                loop {
                    if let Some(key) = ready.pop() {
                        let (namespace, name) = key.split_once('/').unwrap_or_default();
                        return Some((ObjectRef::new(name).within(namespace), ready));
                    }
                    let now = OffsetDateTime::now_utc();
                    match renewals.take_due(now) {
                        Ok(taken) => ready = taken,
                        Err(next) => {
                            // Until the next entry's second, or a sooner one arrives (an hour at
                            // most: nothing is lost if the clock jumps).
                            let wait = next.map_or(Duration::from_secs(3600), |second| {
                                let nanos =
                                    i128::from(second) * 1_000_000_000 - now.unix_timestamp_nanos();
                                Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(0))
                                    .min(Duration::from_secs(3600))
                            });
                            let _ = tokio::time::timeout(wait, renewals.sooner.notified()).await;
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use proptest::prelude::*;

    fn time(unix: i64, nanos: u32) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix)
            .unwrap()
            .replace_nanosecond(nanos)
            .unwrap()
    }

    proptest! {
        /// Any wait comes due at the first whole second not before it: never early (a look
        /// that finds its time still ahead would wait again, a loop), less than a second late.
        #[test]
        fn a_wait_comes_due_at_the_first_whole_second_not_before_it(
            unix in 0i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
        ) {
            let renewals = Renewals::default();
            let at = time(unix, nanos);
            renewals.at("ns/kc", at);
            let Err(Some(second)) = renewals.take_due(time(unix - 1, 0)) else {
                panic!("due a second early");
            };
            let due = time(second, 0);
            prop_assert!(due >= at);
            prop_assert!(due - at < time::Duration::SECOND);
            prop_assert_eq!(renewals.take_due(due).map(|t| t.len()), Ok(1));
        }

        /// However often and in whatever order Kubeconfigs are told to wait or forgotten, each
        /// waits at most once, at its last time: as many looks come due as Kubeconfigs wait,
        /// never more (a second chain of looks per event would grow without bound).
        #[test]
        fn each_kubeconfig_waits_once_at_its_last_time(
            steps in proptest::collection::vec((0usize..8, 0i64..100, any::<bool>()), 0..200),
        ) {
            let renewals = Renewals::default();
            let mut expected = std::collections::BTreeMap::new();
            for (object, second, forget) in steps {
                let key = format!("ns/kc-{object}");
                if forget {
                    renewals.forget_key(&key);
                    expected.remove(&key);
                } else {
                    renewals.at(&key, time(1000 + second, 0));
                    expected.insert(key, 1000 + second);
                }
            }
            prop_assert_eq!(renewals.len(), expected.len());
            let mut looks = std::collections::BTreeMap::new();
            for second in 1000..1100 {
                if let Ok(taken) = renewals.take_due(time(second, 0)) {
                    for key in taken {
                        prop_assert!(looks.insert(key.to_string(), second).is_none());
                    }
                }
            }
            prop_assert_eq!(looks, expected);
            prop_assert!(renewals.is_empty());
        }
    }

    #[test]
    fn waits_come_due_in_order_never_before_their_time_and_once() {
        let renewals = Renewals::default();
        renewals.at("ns/b", time(100, 0));
        renewals.at("ns/a", time(100, 1));
        renewals.at("ns/c", time(99, 500));
        // The same wait again (a reconcile that changed nothing) is one entry; a later one
        // replaces it.
        renewals.at("ns/b", time(100, 0));
        renewals.at("ns/d", time(50, 0));
        renewals.at("ns/d", time(150, 0));
        assert_eq!(renewals.len(), 4);
        // "a" at 100 s and 1 ns is due at 101, "c" at 99.5 s at 100: never early.
        assert_eq!(renewals.take_due(time(99, 999_999_999)), Err(Some(100)));
        let names = |taken: Vec<Key>| taken.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(renewals.take_due(time(100, 0)).unwrap()),
            ["ns/b", "ns/c"]
        );
        assert_eq!(renewals.take_due(time(100, 0)), Err(Some(101)));
        assert_eq!(
            names(renewals.take_due(time(200, 0)).unwrap()),
            ["ns/a", "ns/d"]
        );
        assert_eq!(renewals.take_due(time(200, 0)), Err(None));
        assert!(renewals.is_empty());
    }

    #[tokio::test]
    async fn the_stream_wakes_for_a_sooner_wait() {
        let renewals = Arc::new(Renewals::default());
        let mut due = Box::pin(renewals.stream());
        let far = OffsetDateTime::now_utc() + Duration::from_secs(3000);
        renewals.at("ns/later", far);
        // The stream now sleeps towards "later"; a wait due now must not wait behind it.
        let waiting = tokio::spawn(async move { due.next().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        renewals.at("ns/now", OffsetDateTime::now_utc());
        let first = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("the sooner wait came due")
            .unwrap()
            .unwrap();
        assert_eq!(
            (first.namespace.as_deref(), first.name.as_str()),
            (Some("ns"), "now")
        );
        assert_eq!(renewals.len(), 1);
    }
}
