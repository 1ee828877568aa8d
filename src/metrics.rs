//! Prometheus metrics (OpenMetrics text on `/metrics`).
//!
//! - `kubeconfig_authority_expiry_seconds{namespace,name}`: seconds until each Kubeconfig's
//!   current certificate or token expires (negative once expired), computed at scrape time
//!   from the controller's cache: one series per Kubeconfig, about 100 bytes each per scrape.
//! - `kubeconfig_authority_issued_total{reason}`: credentials written, by reason (`Issued`,
//!   `Renewed`, `Repaired`, `Reissued`).
//! - `kubeconfig_authority_failures_total{reason}`: problems reported (the condition reasons,
//!   for example `CASecretInvalid`, `PolicyViolation`) and `APIError` for failed API calls.
//! - `kubeconfig_authority_reconcile_duration_seconds`: a histogram of Kubeconfig reconciles.
//! - `kubeconfig_authority_reconciles_in_flight`: reconciles running now (the runtime's queue
//!   itself is not observable; a value that stays at `--concurrency` means work is waiting).
//! - `kubeconfig_authority_leader`: 1 while this replica holds the lease.
//! - `kubeconfig_authority_targets`: target clusters watched now.
//! - `kubeconfig_authority_targets_unreachable`: of those, the ones whose watches fail now
//!   (their Kubeconfigs say `TargetUnreachable`).
//! - `kubeconfig_authority_target_reachable{target}` (1 or 0) and
//!   `kubeconfig_authority_target_last_contact_timestamp_seconds{target}` (when it was last
//!   heard from), per target, named by its admin kubeconfig's Secret `namespace/name`. The
//!   target metrics are refreshed every 30 s.

use std::sync::{Arc, atomic::AtomicI64};

use kube::{ResourceExt, runtime::reflector::Store};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use time::OffsetDateTime;

use crate::{api::Kubeconfig, model::authority::Contact};

/// A target cluster, by its admin kubeconfig's Secret (`namespace/name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub issued: Family<ReasonLabels, Counter>,
    pub failures: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub leader: Gauge<i64, AtomicI64>,
    pub watches_stalled: Gauge<i64, AtomicI64>,
    pub targets: Gauge<i64, AtomicI64>,
    pub targets_unreachable: Gauge<i64, AtomicI64>,
    pub target_reachable: Family<TargetLabels, Gauge<i64, AtomicI64>>,
    pub target_last_contact: Family<TargetLabels, Gauge<i64, AtomicI64>>,
    kubeconfigs: Arc<std::sync::Mutex<Option<Store<Kubeconfig>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Seconds until expiry, read from the Kubeconfigs' status at scrape time.
#[derive(Debug)]
struct Expiry(Arc<std::sync::Mutex<Option<Store<Kubeconfig>>>>);

impl Collector for Expiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut family = encoder.encode_descriptor(
            "kubeconfig_authority_expiry_seconds",
            "Seconds until the current certificate or token of each Kubeconfig expires",
            None,
            MetricType::Gauge,
        )?;
        let store = self.0.lock().ok().and_then(|s| s.clone());
        for kc in store.iter().flat_map(|s| s.state()) {
            let Some(not_after) = kc.status.as_ref().and_then(|s| s.not_after.as_ref()) else {
                continue;
            };
            let labels = [
                ("namespace", kc.namespace().unwrap_or_default()),
                ("name", kc.name_any()),
            ];
            let gauge = ConstGauge::new(not_after.0.as_second() - now);
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kubeconfig_authority");
        let issued = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "issued",
            "Credentials written, by reason (Issued, Renewed, Repaired, Reissued)",
            issued.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "failures",
            "Problems reported in a condition, and failed API calls (APIError), by reason",
            failures.clone(),
        );
        let reconcile_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by Kubeconfig reconciles",
            reconcile_duration.clone(),
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "reconciles_in_flight",
            "Kubeconfig reconciles running now",
            in_flight.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and reconciles",
            leader.clone(),
        );
        let watches_stalled = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "watches_stalled",
            "Watches failing without progress for 30 s or more (the leader steps down)",
            watches_stalled.clone(),
        );
        let targets = Gauge::<i64, AtomicI64>::default();
        registry.register("targets", "Target clusters watched now", targets.clone());
        let targets_unreachable = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "targets_unreachable",
            "Target clusters that could not be reached at the last look",
            targets_unreachable.clone(),
        );
        let target_reachable = Family::<TargetLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "target_reachable",
            "1 when a target cluster answers its watches, 0 when it does not",
            target_reachable.clone(),
        );
        let target_last_contact = Family::<TargetLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "target_last_contact_timestamp_seconds",
            "When a target cluster was last heard from (Unix time)",
            target_last_contact.clone(),
        );
        let kubeconfigs = Arc::default();
        registry.register_collector(Box::new(Expiry(Arc::clone(&kubeconfigs))));
        Arc::new(Self {
            watches_stalled,
            targets,
            targets_unreachable,
            target_reachable,
            target_last_contact,
            kubeconfigs,
            registry,
            issued,
            failures,
            reconcile_duration,
            in_flight,
            leader,
        })
    }

    /// The cache the expiry gauge reads (each term of leadership has its own).
    pub fn observe(&self, kubeconfigs: Option<Store<Kubeconfig>>) {
        if let Ok(mut store) = self.kubeconfigs.lock() {
            *store = kubeconfigs;
        }
    }

    pub fn count(family: &Family<ReasonLabels, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Keeps `kubeconfig_authority_reconciles_in_flight` and the duration histogram for one
/// reconcile.
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    started: std::time::Instant,
}

impl ReconcileTimer {
    pub fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.in_flight.inc();
        Self {
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .reconcile_duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// The targets as they are now (see [`Contact`]):
    /// a target no longer watched drops out of the families.
    pub fn observe_targets(&self, contacts: &[Contact]) {
        self.targets.set(contacts.len() as i64);
        self.targets_unreachable
            .set(contacts.iter().filter(|c| c.error.is_some()).count() as i64);
        self.target_reachable.clear();
        self.target_last_contact.clear();
        for contact in contacts {
            let labels = TargetLabels {
                target: contact.name(),
            };
            self.target_reachable
                .get_or_create(&labels)
                .set(i64::from(contact.error.is_none()));
            if let Some(seconds) = contact
                .last
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
            {
                self.target_last_contact.get_or_create(&labels).set(seconds);
            }
        }
    }
}
