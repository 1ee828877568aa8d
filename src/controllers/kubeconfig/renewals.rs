//! The next look at every Ready Kubeconfig (its renewal, or the next check of its copies),
//! outside kube-runtime's scheduler. The scheduler keeps each waiting object in a delay queue
//! and a map, under a reference of four strings: about 0.8 KiB per Kubeconfig, a fifth of the
//! controller's memory at 100,000 (`make bench`, heaptrack). Here a wait is one entry of a
//! sorted set of (second, namespace, name), about 0.12 KiB, and the reconcile returns
//! `Action::await_change()`. A due entry triggers a reconcile through the controller's
//! `reconcile_on`; the reconcile decides again from what it reads, so an entry left behind by
//! an earlier reconcile (the set never looks entries up by object) only brings a look that
//! writes nothing, once, at its time. Waits are rounded up to the next whole second: never
//! early, so a look never finds its renewal still ahead and waits again in a loop.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::Stream;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::api::Kubeconfig;

/// (Unix second, namespace, name).
type Entry = (i64, String, String);

#[derive(Default)]
pub struct Renewals {
    due: Mutex<BTreeSet<Entry>>,
    /// Told of an entry sooner than all others, so that the waiting stream looks again.
    sooner: Notify,
}

impl Renewals {
    /// Brings `kc` back after `wait`, at the first whole second not before then.
    pub fn after(&self, kc: &Kubeconfig, wait: Duration) {
        let at = OffsetDateTime::now_utc() + wait;
        self.at(kc.namespace().unwrap_or_default(), kc.name_any(), at);
    }

    fn at(&self, namespace: String, name: String, at: OffsetDateTime) {
        let second = at.unix_timestamp() + i64::from(at.nanosecond() > 0);
        let Ok(mut due) = self.due.lock() else {
            return;
        };
        let soonest = due.first().is_none_or(|first| second < first.0);
        due.insert((second, namespace, name));
        drop(due);
        if soonest {
            self.sooner.notify_one();
        }
    }

    /// Takes the entries due at `now`, or says when the next one is.
    fn take_due(&self, now: OffsetDateTime) -> Result<Vec<Entry>, Option<i64>> {
        let Ok(mut due) = self.due.lock() else {
            return Err(None);
        };
        let now = now.unix_timestamp();
        let mut taken = Vec::new();
        while due.first().is_some_and(|first| first.0 <= now) {
            taken.extend(due.pop_first());
        }
        if taken.is_empty() {
            return Err(due.first().map(|first| first.0));
        }
        Ok(taken)
    }

    /// How many waits are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.due.lock().map_or(0, |due| due.len())
    }

    /// Whether no wait is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Kubeconfigs whose time has come, as it comes.
    pub fn stream(self: &Arc<Self>) -> impl Stream<Item = ObjectRef<Kubeconfig>> + Send + use<> {
        let renewals = self.clone();
        futures::stream::unfold(Vec::<Entry>::new(), move |mut ready| {
            let renewals = renewals.clone();
            async move {
                loop {
                    if let Some((_, namespace, name)) = ready.pop() {
                        return Some((ObjectRef::new(&name).within(&namespace), ready));
                    }
                    let now = OffsetDateTime::now_utc();
                    match renewals.take_due(now) {
                        Ok(taken) => ready = taken,
                        Err(next) => {
                            // Until the next entry's second, or a sooner one arrives (a wait of
                            // an hour at most: nothing is lost if the clock jumps).
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
            renewals.at("ns".into(), "kc".into(), at);
            let Err(Some(second)) = renewals.take_due(time(unix - 1, 0)) else {
                panic!("due a second early");
            };
            let due = time(second, 0);
            prop_assert!(due >= at);
            prop_assert!(due - at < time::Duration::SECOND);
            prop_assert_eq!(renewals.take_due(due).map(|t| t.len()), Ok(1));
        }
    }

    fn time(unix: i64, nanos: u32) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix)
            .unwrap()
            .replace_nanosecond(nanos)
            .unwrap()
    }

    #[test]
    fn waits_come_due_in_order_never_before_their_time_and_once() {
        let renewals = Renewals::default();
        renewals.at("ns".into(), "b".into(), time(100, 0));
        renewals.at("ns".into(), "a".into(), time(100, 1));
        renewals.at("ns".into(), "c".into(), time(99, 500));
        // The same wait again (a reconcile that changed nothing) is one entry.
        renewals.at("ns".into(), "b".into(), time(100, 0));
        assert_eq!(renewals.len(), 3);
        // "a" at 100 s and 1 ns is due at 101, "c" at 99.5 s at 100: never early.
        assert_eq!(renewals.take_due(time(99, 999_999_999)), Err(Some(100)));
        let names = |taken: Vec<Entry>| taken.into_iter().map(|e| e.2).collect::<Vec<_>>();
        assert_eq!(names(renewals.take_due(time(100, 0)).unwrap()), ["b", "c"]);
        assert_eq!(renewals.take_due(time(100, 0)), Err(Some(101)));
        assert_eq!(names(renewals.take_due(time(200, 0)).unwrap()), ["a"]);
        assert_eq!(renewals.take_due(time(200, 0)), Err(None));
        assert!(renewals.is_empty());
    }

    #[tokio::test]
    async fn the_stream_wakes_for_a_sooner_wait() {
        let renewals = Arc::new(Renewals::default());
        let mut due = Box::pin(renewals.stream());
        let far = OffsetDateTime::now_utc() + Duration::from_secs(3000);
        renewals.at("ns".into(), "later".into(), far);
        // The stream now sleeps towards "later"; a wait due now must not wait behind it.
        let waiting = tokio::spawn(async move { due.next().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        renewals.at("ns".into(), "now".into(), OffsetDateTime::now_utc());
        let first = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("the sooner wait came due")
            .unwrap()
            .unwrap();
        assert_eq!(first.name, "now");
        assert_eq!(renewals.len(), 1);
    }
}
