//! Authorities as values: which one a Kubeconfig uses, what each reads (for the watches), and
//! one resolved for use (where kubeconfigs point and what signs).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use kubeconfig_authority_pki::CertificateAuthority;

use crate::api::{AuthorityConfig, AuthorityKind, AuthorityRef, KeyRef, Kubeconfig, TargetContact};

/// A usable authority.
pub struct Resolved {
    pub server: String,
    /// PEM of the bundle that verifies the server.
    pub server_ca_pem: String,
    pub signer: ResolvedSigner,
    /// The target cluster's admin kubeconfig (namespace and key filled in), when the
    /// kubeconfigs are for a cluster other than the controller's own.
    pub target: Option<KeyRef>,
}

/// The key of a target's admin kubeconfig when `spec.target` leaves it out.
pub const TARGET_KEY: &str = "kubeconfig";

/// The signer of a resolved authority.
pub enum ResolvedSigner {
    /// Certificates signed here with this CA.
    Ca(Arc<CertificateAuthority>),
    /// Certificates signed through the CSR API by this signer.
    Csr { signer_name: String },
    /// ServiceAccount tokens with these audiences.
    Token { audiences: Vec<String> },
}

/// The authority a Kubeconfig uses: its own reference, or the controller's default.
pub fn authority_ref<'a>(
    kc: &'a Kubeconfig,
    default: Option<&'a AuthorityRef>,
) -> Option<&'a AuthorityRef> {
    kc.spec.authority_ref.as_ref().or(default)
}

/// Whether a Kubeconfig in `namespace` with this reference uses the given authority.
pub fn refers_to(
    aref: &AuthorityRef,
    namespace: &str,
    kind: AuthorityKind,
    authority_namespace: Option<&str>,
    name: &str,
) -> bool {
    aref.kind == kind
        && aref.name == name
        && match kind {
            AuthorityKind::Authority => authority_namespace == Some(namespace),
            AuthorityKind::ClusterAuthority => true,
        }
}

/// The Secrets (namespace, name) an authority reads: its CA Secret, its CA bundle Secret, its
/// kubeconfig Secret and its target's.
pub fn secrets_of(config: &AuthorityConfig, own_namespace: Option<&str>) -> Vec<(String, String)> {
    let ns =
        |explicit: &Option<String>| explicit.clone().or_else(|| own_namespace.map(String::from));
    let bundle = config
        .ca_bundle
        .as_ref()
        .and_then(|b| b.secret_ref.as_ref());
    let signer = config
        .signer
        .ca_secret_ref
        .as_ref()
        .map(|r| (&r.namespace, &r.name));
    let kubeconfig = config
        .kubeconfig_secret_ref
        .as_ref()
        .map(|r| (&r.namespace, &r.name));
    signer
        .into_iter()
        .chain(bundle.map(|r| (&r.namespace, &r.name)))
        .chain(kubeconfig)
        .chain(config.target.as_ref().map(|t| {
            (
                &t.kubeconfig_secret_ref.namespace,
                &t.kubeconfig_secret_ref.name,
            )
        }))
        .filter_map(|(namespace, name)| Some((ns(namespace)?, name.clone())))
        .collect()
}

/// The ConfigMaps (namespace, name) an authority reads: its CA bundle ConfigMap.
pub fn config_maps_of(
    config: &AuthorityConfig,
    own_namespace: Option<&str>,
) -> Vec<(String, String)> {
    config
        .ca_bundle
        .as_ref()
        .and_then(|b| b.config_map_ref.as_ref())
        .and_then(|r| {
            let ns = r
                .namespace
                .clone()
                .or_else(|| own_namespace.map(String::from))?;
            Some((ns, r.name.clone()))
        })
        .into_iter()
        .collect()
}

/// The ConfigMap kube-controller-manager publishes the cluster's CA in, in every namespace:
/// the default CA bundle of token and CSR authorities.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The admin kubeconfig of an authority's target cluster (namespace and key filled in: an
/// Authority's own namespace, the key [`TARGET_KEY`]), if it names one.
pub fn target_of(config: &AuthorityConfig, own_namespace: Option<&str>) -> Option<KeyRef> {
    let r = &config.target.as_ref()?.kubeconfig_secret_ref;
    Some(KeyRef {
        name: r.name.clone(),
        key: Some(r.key.clone().unwrap_or_else(|| TARGET_KEY.into())),
        namespace: r
            .namespace
            .clone()
            .or_else(|| own_namespace.map(String::from)),
    })
}

/// How often an authority's `status.target.lastContact` is written while the target answers.
pub const CONTACT_HEARTBEAT: Duration = Duration::from_secs(300);

/// A target cluster as its watches see it.
pub struct Contact {
    /// Its admin kubeconfig's Secret (namespace and key filled in).
    pub target: KeyRef,
    /// Why it cannot be reached now; `None` when it can.
    pub error: Option<String>,
    /// When a watch there last made progress.
    pub last: Option<SystemTime>,
}

impl Contact {
    /// `namespace/name` of the admin kubeconfig's Secret.
    pub fn name(&self) -> String {
        format!(
            "{}/{}",
            self.target.namespace.as_deref().unwrap_or_default(),
            self.target.name
        )
    }

    /// What an authority's `status.target` should say, when it should be written: on a change
    /// of reachability or of the reason, and every [`CONTACT_HEARTBEAT`] while the target
    /// answers. `None`: leave it. Pure.
    pub fn status(
        &self,
        current: Option<&TargetContact>,
        now: SystemTime,
    ) -> Option<TargetContact> {
        let wanted = TargetContact {
            reachable: self.error.is_none(),
            last_contact: self
                .last
                .map(|t| super::to_time(time::OffsetDateTime::from(t))),
            message: self.error.clone(),
        };
        let Some(current) = current else {
            return Some(wanted);
        };
        if current.reachable != wanted.reachable || current.message != wanted.message {
            return Some(wanted);
        }
        let written = current.last_contact.as_ref().map(|t| SystemTime::from(t.0));
        let stale = written.is_none_or(|at| {
            now.duration_since(at)
                .is_ok_and(|age| age >= CONTACT_HEARTBEAT)
        });
        (wanted.reachable && stale && wanted.last_contact != current.last_contact).then_some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;

    fn contact(error: Option<&str>, last: SystemTime) -> Contact {
        Contact {
            target: KeyRef {
                name: "b".into(),
                key: Some("value".into()),
                namespace: Some("ns".into()),
            },
            error: error.map(Into::into),
            last: Some(last),
        }
    }

    #[test]
    fn a_target_s_status_is_written_on_changes_and_every_five_minutes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let first = contact(None, at(0)).status(None, at(0)).unwrap();
        assert!(first.reachable && first.message.is_none());
        assert_eq!(
            contact(None, at(30)).status(Some(&first), at(30)),
            None,
            "nothing new"
        );
        let later = contact(None, at(300))
            .status(Some(&first), at(300))
            .unwrap();
        assert_eq!(
            later.last_contact,
            Some(crate::model::to_time(time::OffsetDateTime::from(at(300))))
        );
        let down = contact(Some("connection refused"), at(300))
            .status(Some(&later), at(330))
            .unwrap();
        assert!(!down.reachable);
        assert_eq!(down.message.as_deref(), Some("connection refused"));
        assert_eq!(
            down.last_contact, later.last_contact,
            "the last contact stays"
        );
        assert_eq!(
            contact(Some("connection refused"), at(300)).status(Some(&down), at(3600)),
            None,
            "still down: nothing to write"
        );
        assert!(
            contact(None, at(3600))
                .status(Some(&down), at(3600))
                .unwrap()
                .reachable
        );
    }

    proptest! {
        /// Over any run of reachability (a look every 30 s), the writes are the changes plus
        /// one heartbeat per five minutes at most, and the status written last is what the
        /// target is.
        #[test]
        fn writes_are_bounded_by_changes_and_heartbeats(
            states in proptest::collection::vec(any::<bool>(), 1..400),
        ) {
            let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let mut current: Option<TargetContact> = None;
            let (mut writes, mut changes, mut last_contact) = (0u64, 0u64, t0);
            let mut previous = None;
            for (i, reachable) in states.iter().enumerate() {
                let now = t0 + Duration::from_secs(30 * i as u64);
                if *reachable {
                    last_contact = now;
                }
                if previous != Some(*reachable) {
                    changes += 1;
                }
                previous = Some(*reachable);
                let error = (!reachable).then_some("down");
                if let Some(next) = contact(error, last_contact).status(current.as_ref(), now) {
                    writes += 1;
                    current = Some(next);
                }
                prop_assert_eq!(current.as_ref().map(|c| c.reachable), Some(*reachable));
            }
            let minutes = 30 * states.len() as u64 / 60;
            prop_assert!(writes <= changes + minutes / 5 + 1, "{} writes, {} changes", writes, changes);
        }
    }
}
