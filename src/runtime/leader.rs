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
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
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

/// Waits until this replica holds the Lease. `None` when the process is told to stop first.
/// An API server that cannot be reached is retried, never fatal.
pub async fn acquire(client: &Client, election: &LeaderElection) -> Option<Held> {
    let mut pause = Duration::from_secs(1);
    loop {
        let attempt = async {
            let manager =
                kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease)
                    .with_namespace(&election.namespace)
                    .with_identity(&election.identity)
                    .with_duration(LEASE_SECONDS)
                    .with_grace(LEASE_GRACE_SECONDS)
                    .with_field_manager(FIELD_MANAGER)
                    .build()
                    .await?;
            let (mut leading, task) = manager.watch().await;
            info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.lease), "waiting to lead");
            while !*leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    return Err(kube_lease_manager::LeaseManagerError::InconsistentState(
                        "the lease task stopped".into(),
                    ));
                }
            }
            Ok(Held { leading, task })
        };
        tokio::select! {
            held = attempt => match held {
                Ok(held) => {
                    info!(identity = %election.identity, "leading");
                    return Some(held);
                }
                Err(e) => warn!("leader election: {e}; trying again in {pause:?}"),
            },
            () = super::terminated() => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = super::terminated() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(LEASE_SECONDS));
    }
}
