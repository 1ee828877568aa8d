//! Leader election through a Lease (kube-lease-manager): one replica reconciles, the others
//! wait, ready and idle.

use std::time::Duration;

use kube::Client;
use tracing::{info, warn};

use crate::api::FIELD_MANAGER;

/// How long a lease is held without renewal, and how long before its end it is renewed: a
/// replica that dies is replaced within about `LEASE_SECONDS`.
pub const LEASE_SECONDS: u64 = 10;
const LEASE_GRACE_SECONDS: u64 = 3;

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
/// this replica holds it at every change, and retries errors within [`MAX_RETRY`].
async fn follow(
    manager: kube_lease_manager::LeaseManager,
    leading: tokio::sync::watch::Sender<bool>,
) -> kube_lease_manager::Result<()> {
    let mut pause = Duration::from_millis(500);
    loop {
        tokio::select! {
            biased;
            () = leading.closed() => return manager.release().await,
            changed = manager.changed() => match changed {
                Ok(state) => {
                    pause = Duration::from_millis(500);
                    if leading.send(state).is_err() {
                        return manager.release().await;
                    }
                }
                Err(e) => {
                    warn!("leader election: {e}; trying again in {pause:?}");
                    tokio::select! {
                        () = leading.closed() => return manager.release().await,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_RETRY);
                }
            },
        }
    }
}

/// Waits until this replica holds the Lease. `None` when the process is told to stop first.
/// An API server that cannot be reached is retried, never fatal.
pub async fn acquire(client: &Client, election: &LeaderElection) -> Option<Held> {
    let mut pause = Duration::from_millis(500);
    let manager = loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease)
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
    let task = tokio::spawn(follow(manager, sender));
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
