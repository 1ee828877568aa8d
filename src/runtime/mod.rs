//! Wiring: the Kubeconfig controller, the watches that bring an object back within seconds of a
//! change to anything it depends on, and shutdown on SIGTERM or Ctrl-C.
//!
//! Watches (each a reflector whose cache the reconciler reads):
//! - Kubeconfigs (the controller's own);
//! - Secrets labelled as managed by this controller (a Kubeconfig's Secret and its copies, each
//!   naming its Kubeconfig in an annotation): an edit or a deletion is repaired; the echo of
//!   the controller's own write brings nothing back;
//! - CertificateSigningRequests the controller made: a signature is taken at once;
//! - ClusterRoleBindings and RoleBindings labelled as managed: mapped back through their
//!   annotation, so a deleted or edited binding is restored;
//! - Authorities and ClusterAuthorities: their Kubeconfigs are looked at again;
//! - the metadata of all Namespaces: a change of labels re-checks the namespace selectors of
//!   the authorities its Kubeconfigs use;
//! - the metadata of all Secrets and ConfigMaps: a change to a CA Secret, a CA bundle or a
//!   kubeconfig Secret brings back the Kubeconfigs of every authority that reads it, and the
//!   cluster CA ConfigMap `kube-root-ca.crt` those of its namespace. Only metadata is kept.

use std::{sync::Arc, time::Duration};

use kube::Client;
use tracing::{info, warn};

mod caches;
mod http;
mod leader;
mod term;

use http::{Health, HealthState, serve_http};
use leader::LEASE_SECONDS;
pub use leader::LeaderElection;
use term::Term;

use crate::{api::AuthorityRef, client::watch::Watches, model::Error};

/// How the controller runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The authority of Kubeconfigs that name none.
    pub default_authority: Option<AuthorityRef>,
    /// Where to answer `/livez`, `/readyz` and `/metrics`, if anywhere.
    pub health_addr: Option<std::net::SocketAddr>,
    /// How many Kubeconfigs are reconciled at once (0: no limit).
    pub concurrency: u16,
    /// Lead through a Lease, so that several replicas can run.
    pub leader_election: Option<LeaderElection>,
}

/// Enough to keep the API server busy without queueing thousands of requests in it.
pub const DEFAULT_CONCURRENCY: u16 = 32;

/// Runs the controller until SIGTERM or Ctrl-C; in-flight reconciles finish first.
///
/// The process serves `/livez`, `/readyz` and `/metrics` throughout, and reconciles in terms:
/// with leader election, a term starts when this replica takes the Lease; it ends at shutdown,
/// when the Lease is lost, when a watch has stalled (then the Lease is given up, so that a
/// standby replica whose watches work takes over, and this one competes again later), or when
/// watches froze after the API server came back (a new term starts at once, the Lease kept).
/// Each term has its own caches and controllers: nothing stale survives into the next.
pub async fn run(client: Client, options: Options) -> Result<(), Error> {
    let health = Arc::new(Health::default());
    let metrics = crate::metrics::Metrics::new();
    let watches = Arc::new(Watches::default());
    if let Some(addr) = options.health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Startup(format!("listening on {addr} for health checks: {e}")))?;
        tokio::spawn(serve_http(listener, health.clone(), metrics.clone()));
    }
    let mut kept = None;
    loop {
        let lease = match (&options.leader_election, kept.take()) {
            (_, Some(lease)) => Some(lease),
            (None, None) => None,
            (Some(election), None) => {
                health.set(HealthState::Follower);
                let Some(lease) = leader::acquire(&client, election).await else {
                    info!("stopped before leading");
                    return Ok(());
                };
                Some(lease)
            }
        };
        let leading = lease.as_ref().map(|l| l.leading.clone());
        let term = Term {
            client: &client,
            options: &options,
            health: &health,
            metrics: &metrics,
            watches: &watches,
        };
        let end = term.run(leading).await?;
        metrics.leader.set(0);
        metrics.observe(None);
        watches.clear();
        match end {
            TermEnd::Restart(message) => {
                warn!("starting the caches and controllers anew: {message}");
                kept = lease;
            }
            TermEnd::Shutdown => {
                release(lease).await;
                info!("stopped");
                return Ok(());
            }
            TermEnd::LostLease => {
                // Not leading from now, even while the release waits for the API server.
                health.set(HealthState::Follower);
                release(lease).await;
                warn!("lost the leader lease; waiting to lead again");
            }
            TermEnd::Stalled(message) => {
                if !step_down(&health, &message, lease).await {
                    return Ok(());
                }
            }
        }
    }
}

async fn release(lease: Option<leader::Held>) {
    if let Some(lease) = lease {
        lease.release().await;
    }
}

/// Gives the Lease up for [`STEPPED_DOWN`], not ready meanwhile: a replica that gave up
/// leading must not look like a healthy leader. `false` when told to stop meanwhile.
async fn step_down(health: &Health, message: &str, lease: Option<leader::Held>) -> bool {
    warn!(
        "giving up the leader lease: {message}; a standby replica leads meanwhile, this one competes again in {}s",
        STEPPED_DOWN.as_secs()
    );
    health.set_stalled(Some(format!("stepped down as leader: {message}")));
    release(lease).await;
    let waited = tokio::select! {
        () = tokio::time::sleep(STEPPED_DOWN) => true,
        () = terminated() => false,
    };
    health.set_stalled(None);
    waited
}

/// How long a leader whose watches stalled leaves the Lease to the others.
const STEPPED_DOWN: Duration = Duration::from_secs(LEASE_SECONDS * 3);

/// Why a term of reconciling ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TermEnd {
    Shutdown,
    LostLease,
    /// The watches stalled (what `/readyz` said).
    Stalled(String),
    /// Watches froze after the API server came back: a new term starts at once, with the
    /// Lease kept.
    Restart(String),
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
