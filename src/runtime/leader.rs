//! Leader election through a Lease (kube-lease-manager): one replica reconciles, the others
//! wait, ready and idle.
//!
//! A leader whose renewals do not get through (an API server that hangs, or answers too late)
//! stops leading [`FENCE`] before its Lease can expire ([`Renewals`]), as client-go's renew
//! deadline does: kube-lease-manager keeps saying "leader" while its renewal waits for an
//! answer, and a standby takes an expired Lease, so without the fence both would reconcile
//! once the API server answers again.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::Client;
use tracing::{info, warn};

use crate::api::FIELD_MANAGER;

/// How long a lease is held without renewal, and how long before its end it is renewed: a
/// replica that dies is replaced within about `LEASE_SECONDS`.
pub const LEASE_SECONDS: u64 = 10;
const LEASE_GRACE_SECONDS: u64 = 7;

/// How long before its Lease would expire a leader that could not renew it stops leading: a
/// renewal has `LEASE_GRACE_SECONDS - FENCE` (6 s) to get through, an API server under load
/// included.
const FENCE: Duration = Duration::from_secs(1);

/// When this replica last wrote the Lease successfully (took or renewed it): the moment that
/// write was sent, which is no later than the renewal time it wrote.
#[derive(Clone, Default)]
struct Renewals(Arc<Mutex<Option<Instant>>>);

impl Renewals {
    fn record(&self, sent: Instant) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(last.map_or(sent, |l| l.max(sent)));
        }
    }

    /// When a leader must have stopped unless it renews first: [`FENCE`] before the Lease
    /// it last wrote expires.
    fn deadline(&self) -> Option<Instant> {
        let last = (*self.0.lock().ok()?)?;
        Some(last + Duration::from_secs(LEASE_SECONDS) - FENCE)
    }

    /// Returns once the deadline has passed without a renewal (never before the first write).
    async fn lapsed(&self) {
        loop {
            let Some(deadline) = self.deadline() else {
                return std::future::pending().await;
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// `client` for the Lease manager: each of its writes that succeeds is recorded here.
    fn client(&self, client: &Client) -> Client {
        let (inner, renewals) = (client.clone(), self.clone());
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let (inner, renewals) = (inner.clone(), renewals.clone());
            async move {
                let (sent, write) = (Instant::now(), request.method() != http::Method::GET);
                let response = inner.send(request).await?;
                if write && response.status().is_success() {
                    renewals.record(sent);
                }
                Ok::<_, kube::Error>(response)
            }
        });
        Client::new(service, client.default_namespace().to_string())
    }
}

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
}

/// A Lease this replica holds: `leading` turns false when it is lost.
pub struct Held {
    pub leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<()>>,
}

impl Held {
    /// Gives the Lease up (at once when the API server answers; otherwise it expires).
    pub async fn release(self) {
        // Closing the channel makes the lease task release the lease.
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(LEASE_SECONDS), self.task).await {
            Ok(Ok(Err(e))) => warn!("releasing the lease: {e}"),
            Ok(_) => {}
            Err(_) => warn!("releasing the lease timed out; it expires on its own"),
        }
    }
}

/// The longest pause between two attempts to reach the Lease. kube-lease-manager's own
/// `watch()` waits up to 30 s between attempts after errors, three lease durations: a standby
/// would then take over long after an outage ends. This loop keeps it under half a lease.
const MAX_RETRY: Duration = Duration::from_secs(LEASE_SECONDS / 2);

/// Follows the Lease until `leading`'s receiver is dropped, then releases it: sends whether
/// this replica holds it at every change, and retries errors within [`MAX_RETRY`]. A leader
/// whose renewal did not get through in time is told it lost the Lease, and follows it no
/// more.
async fn follow(
    manager: kube_lease_manager::LeaseManager,
    leading: tokio::sync::watch::Sender<bool>,
    renewals: Renewals,
) -> kube_lease_manager::Result<()> {
    let mut pause = Duration::from_millis(500);
    // After an error, the next look waits for the pause.
    let mut failed = false;
    loop {
        let lapsed = async {
            if *leading.borrow() {
                renewals.lapsed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let next = async {
            if std::mem::take(&mut failed) {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY);
            }
            manager.changed().await
        };
        tokio::select! {
            biased;
            () = leading.closed() => return manager.release().await,
            () = lapsed => {
                warn!(
                    "the leader lease was not renewed within {}s (the API server does not answer in time): no longer leading, before the lease can expire and another replica take it",
                    LEASE_SECONDS - FENCE.as_secs()
                );
                let _ = leading.send(false);
                leading.closed().await;
                return manager.release().await;
            }
            changed = next => match changed {
                Ok(state) => {
                    pause = Duration::from_millis(500);
                    if leading.send(state).is_err() {
                        return manager.release().await;
                    }
                }
                Err(e) => {
                    warn!("leader election: {e}; trying again in {pause:?}");
                    failed = true;
                }
            },
        }
    }
}

/// Waits until this replica holds the Lease. `None` when the process is told to stop first.
/// An API server that cannot be reached is retried, never fatal.
pub async fn acquire(client: &Client, election: &LeaderElection) -> Option<Held> {
    let mut pause = Duration::from_millis(500);
    let renewals = Renewals::default();
    let manager = loop {
        let built =
            kube_lease_manager::LeaseManagerBuilder::new(renewals.client(client), &election.lease)
                .with_namespace(&election.namespace)
                .with_identity(&election.identity)
                .with_duration(LEASE_SECONDS)
                .with_grace(LEASE_GRACE_SECONDS)
                .with_field_manager(FIELD_MANAGER)
                .build();
        tokio::select! {
            built = built => match built {
                Ok(manager) => break manager,
                Err(e) => warn!("leader election: {e}; trying again in {pause:?}"),
            },
            () = super::terminated() => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = super::terminated() => return None,
        }
        pause = (pause * 2).min(MAX_RETRY);
    };
    let (sender, mut leading) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(follow(manager, sender, renewals));
    info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.lease), "waiting to lead");
    loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    // The task ended (it returns only once released): start over.
                    warn!("leader election stopped; starting again");
                    return Box::pin(acquire(client, election)).await;
                }
                if *leading.borrow_and_update() {
                    info!(identity = %election.identity, "leading");
                    return Some(Held { leading, task });
                }
            }
            () = super::terminated() => {
                drop(leading);
                let _ = tokio::time::timeout(Duration::from_secs(LEASE_SECONDS), task).await;
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order the answers to the Lease writes come in, a leader stops [`FENCE`]
        /// before the Lease the latest of them wrote expires, and after its next renewal is
        /// due (so a renewal that gets through in time never ends a term).
        #[test]
        fn the_fence_falls_between_the_next_renewal_and_the_expiry(
            offsets in proptest::collection::vec(0u64..100_000, 1..20)
        ) {
            let start = Instant::now();
            let renewals = Renewals::default();
            for ms in &offsets {
                renewals.record(start + Duration::from_millis(*ms));
            }
            let last = start + Duration::from_millis(*offsets.iter().max().unwrap());
            let deadline = renewals.deadline().unwrap();
            let lease = Duration::from_secs(LEASE_SECONDS);
            prop_assert_eq!(deadline, last + lease - FENCE);
            prop_assert!(deadline < last + lease);
            prop_assert!(deadline > last + lease - Duration::from_secs(LEASE_GRACE_SECONDS));
        }
    }

    #[tokio::test]
    async fn the_fence_waits_for_a_first_write_and_falls_once_its_deadline_passed() {
        let renewals = Renewals::default();
        let lapsed = |renewals: &Renewals| {
            let renewals = renewals.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), renewals.lapsed())
                    .await
                    .is_ok()
            }
        };
        assert!(!lapsed(&renewals).await, "nothing written: no deadline");
        renewals.record(Instant::now() - Duration::from_secs(LEASE_SECONDS));
        assert!(lapsed(&renewals).await, "written a lease ago: past");
        renewals.record(Instant::now());
        assert!(!lapsed(&renewals).await, "renewed now: not yet");
    }
}
