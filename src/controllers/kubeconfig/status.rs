//! The outcome of a reconcile as status, and when to look again. Pure.

use crate::api::RENEW_ANNOTATION;
use std::time::Duration;

use time::OffsetDateTime;

use super::{
    argocd::Registered,
    copies::{self, Distributed},
    secret::WriteReason,
};
use crate::{
    api::{KeyRef, Kubeconfig, KubeconfigStatus},
    model::{Problem, Reason, Result, credential::Held, managed::ManagedSecret, to_time},
};

/// How long a Kubeconfig that waits for a person's fix is left alone before it is looked at
/// again anyway (its watches usually bring it back sooner).
const RETRY_PROBLEM: Duration = Duration::from_secs(300);

/// The credential a Secret ends up holding, or the problem that stopped it.
pub enum Outcome {
    /// `written` names what was done to the Secret in this reconcile; `None` when it was kept.
    /// `blocked`: the authority cannot sign now, and the credential held (still valid, for
    /// the spec as it is) is kept until it expires.
    Ready {
        held: Held,
        renew_at: OffsetDateTime,
        written: Option<WriteReason>,
        message: String,
        blocked: Option<Problem>,
    },
    NotReady(Problem),
}

/// The status to write. Keeps a condition's lastTransitionTime while its status holds. Pure.
pub fn status(
    kc: &Kubeconfig,
    outcome: &Outcome,
    outputs: &Outputs<'_>,
    target: Option<&KeyRef>,
    now: OffsetDateTime,
) -> KubeconfigStatus {
    let distributed = outputs.distributed;
    let previous = kc.status.clone().unwrap_or_default();
    let condition = |type_: &str, status: &str, reason: Reason, message: String| {
        crate::model::condition(
            &previous.conditions,
            type_,
            status,
            reason,
            message,
            kc.metadata.generation,
            now,
        )
    };
    let (ready, reason, message) = match outcome {
        // A target that cannot be reached says so by name; anything else blocks renewal.
        Outcome::Ready {
            blocked: Some(p),
            message,
            ..
        } if p.reason == Reason::TargetUnreachable => {
            ("True", Reason::TargetUnreachable, message.clone())
        }
        Outcome::Ready {
            blocked: Some(_),
            message,
            ..
        } => ("True", Reason::RenewalBlocked, message.clone()),
        Outcome::Ready {
            written: Some(w),
            message,
            ..
        } => ("True", w.reason(), message.clone()),
        Outcome::Ready {
            written: None,
            held,
            message,
            ..
        } => ("True", kept_reason(kc, &held.id), message.clone()),
        Outcome::NotReady(p) => ("False", p.reason, p.message.clone()),
    };
    let mut conditions = vec![condition(READY, ready, reason, message)];
    if let Some(d) = distributed.filter(|_| kc.spec.distribution.is_some()) {
        conditions.push(match &d.problem {
            Some(p) => condition(DISTRIBUTED, "False", p.reason, p.message.clone()),
            None => {
                let mut message = format!("{} matching namespaces hold a current copy", d.copies);
                if !d.conflicts.is_empty() {
                    message += &format!(
                        "; Secret {} exists in namespace(s) {} and was not created by this controller: left untouched; delete it there or exclude the namespace",
                        kc.spec.secret_ref.name,
                        d.conflicts.join(", ")
                    );
                }
                if !d.refused.is_empty() {
                    message += &format!(
                        "; refused: {}. A copy needs the authority's policy.distributionNamespaceSelector to match the namespace and the credential's identity to be allowed to create and update the Secret there",
                        d.refused.join(", ")
                    );
                }
                let (status, reason) = match (d.conflicts.is_empty(), d.refused.is_empty()) {
                    (true, true) => ("True", Reason::Distributed),
                    (false, _) => ("False", Reason::SecretConflict),
                    (true, false) => ("False", Reason::DistributionRefused),
                };
                condition(DISTRIBUTED, status, reason, message)
            }
        });
    }
    if let Some(registered) = outputs.registered.filter(|_| kc.spec.argo_cd.is_some()) {
        conditions.push(match registered {
            Registered::Current(secret) => condition(
                ARGO_CD,
                "True",
                Reason::Registered,
                format!("registered with Argo CD as the cluster Secret {secret}, current"),
            ),
            Registered::Refused(p) => condition(ARGO_CD, "False", p.reason, p.message.clone()),
        });
    }
    let mut status = KubeconfigStatus {
        conditions,
        observed_generation: kc.metadata.generation,
        target: target.cloned().map(Box::new),
        ..previous.clone()
    };
    if let Some(d) = distributed {
        status.distributed_copies = Some(d.copies).filter(|n| *n > 0);
    }
    // A credential written now answers any renewal asked for until now.
    if let Outcome::Ready {
        written: Some(_),
        blocked: None,
        ..
    } = outcome
        && let Some(asked) = kube::ResourceExt::annotations(kc).get(RENEW_ANNOTATION)
    {
        status.renew_requested_at = Some(asked.clone());
    }
    match outcome {
        // The next attempt is no renewal time: the one recorded stays.
        Outcome::Ready {
            blocked: Some(_), ..
        } => {}
        Outcome::Ready { held, renew_at, .. } => {
            status.secret_name = Some(kc.spec.secret_ref.name.clone());
            let id = Some(held.id.clone()).filter(|id| !id.is_empty());
            (status.serial_number, status.token_id) = if held.is_token {
                (None, id)
            } else {
                (id, None)
            };
            status.not_before = Some(to_time(held.not_before));
            status.not_after = Some(to_time(held.not_after));
            status.renewal_time = Some(to_time(*renew_at));
            // Records of older versions lack it: what the status had stays then.
            if !held.credential_id.is_unknown() {
                status.credential_id = Some(held.credential_id.clone());
            }
        }
        // Nothing is held (see `withdraw`).
        Outcome::NotReady(_) => {
            status.renewal_time = None;
            status.secret_name = None;
            status.serial_number = None;
            status.token_id = None;
            status.credential_id = None;
            status.not_before = None;
            status.not_after = None;
        }
    }
    status
}

/// The condition type about the credential.
pub const READY: &str = "Ready";
/// The condition type about `spec.distribution`.
pub const DISTRIBUTED: &str = "Distributed";
/// The condition type about `spec.argoCD`.
pub const ARGO_CD: &str = "ArgoCD";

/// Where the Secret's data went besides the Secret.
#[derive(Default)]
pub struct Outputs<'a> {
    pub distributed: Option<&'a Distributed>,
    pub registered: Option<&'a Registered>,
}

/// When to look at a Kubeconfig again.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Ready: at its renewal, or sooner to check its copies (waits in [`super::renewals`]).
    Renewal(Duration),
    /// Not ready: tried again then (kube-runtime's requeue).
    Retry(Duration),
}

/// Ready: at the renewal time, and with copies at least every [`copies::RECHECK`] (sooner
/// while a namespace is refused by an access review: rights often follow a new namespace by a
/// moment). Not ready: the watches bring the object back when something it depends on
/// changes; a slow retry covers anything they cannot see.
pub fn requeue_for(outcome: &Outcome, outputs: &Outputs<'_>) -> Next {
    match outcome {
        Outcome::Ready { renew_at, .. } => {
            let wait = (*renew_at - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO);
            let wait = match outputs.distributed {
                Some(d) if d.reviews_refused => wait.min(copies::RECHECK_REFUSED),
                Some(_) => wait.min(copies::RECHECK),
                None => wait,
            };
            // A registration refused for a server another Secret holds is asked again (no
            // watch sees that Secret go).
            let wait = match outputs.registered {
                Some(Registered::Refused(_)) => wait.min(copies::RECHECK_REFUSED),
                _ => wait,
            };
            Next::Renewal(wait)
        }
        Outcome::NotReady(p) if p.reason == Reason::CSRPending => Next::Retry(CSR_RETRY),
        Outcome::NotReady(p) if p.reason == Reason::TargetUnreachable => Next::Retry(TARGET_RETRY),
        Outcome::NotReady(_) => Next::Retry(RETRY_PROBLEM),
    }
}

/// How often a credential that cannot be renewed is tried again (the watches of the CA and
/// the authority usually bring it back sooner).
const RETRY_BLOCKED: Duration = Duration::from_secs(60);

/// When `problem` only stops the authority from signing now, the credential the Secret holds
/// (`cached`, as the cache of managed Secrets has it) stays Ready while it is valid, intact and
/// was issued for the spec as it is (the last status was Ready for this generation).
/// Otherwise the problem stands.
pub fn still_valid(
    kc: &Kubeconfig,
    uid: &str,
    problem: Problem,
    cached: Option<&ManagedSecret>,
    now: OffsetDateTime,
) -> Result<Outcome, Problem> {
    if !problem.blocks_renewal_only() {
        return Err(problem);
    }
    let status = kc.status.as_ref();
    let was_ready = status.is_some_and(|s| {
        s.observed_generation == kc.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == READY && c.status == "True")
    });
    let held = cached
        .filter(|s| was_ready && crate::model::managed::is_uid(s.controller_uid, uid) && s.intact)
        .and_then(|s| s.held.clone())
        .filter(|held| now >= held.not_before && now < held.not_after);
    let Some(held) = held else {
        return Err(problem);
    };
    let retry = match problem.reason {
        Reason::CSRPending => CSR_RETRY,
        Reason::TargetUnreachable => TARGET_RETRY,
        _ => RETRY_BLOCKED,
    };
    let message = format!(
        "Secret {} holds a valid kubeconfig until {}, but it cannot be renewed now: {}",
        kc.spec.secret_ref.name, held.not_after, problem.message
    );
    Ok(Outcome::Ready {
        renew_at: (now + retry).min(held.not_after),
        held,
        written: None,
        message,
        blocked: Some(problem),
    })
}

/// The Ready reason of a credential that is kept: what was last done to it, as the current
/// status says (when it is about the same credential), else `Issued`.
fn kept_reason(kc: &Kubeconfig, id: &str) -> Reason {
    let status = kc.status.as_ref();
    let same_certificate =
        status.is_some_and(|s| s.serial_number.as_deref().or(s.token_id.as_deref()) == Some(id));
    let previous = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY && c.status == "True")
    });
    match previous.and_then(|c| Reason::parse(&c.reason)) {
        Some(r @ (Reason::Renewed | Reason::Repaired | Reason::Reissued)) if same_certificate => r,
        _ => Reason::Issued,
    }
}

/// How soon to look again at a Kubeconfig whose CSR waits.
pub const CSR_RETRY: Duration = Duration::from_secs(2);

/// How soon to look again at a Kubeconfig whose target cluster cannot be reached (its watches
/// retry on their own; this brings the Kubeconfig back once they answer).
pub const TARGET_RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::kubeconfig::fixtures::*;
    use crate::controllers::kubeconfig::{
        request::Desired,
        secret::{SecretPlan, plan_secret},
    };

    #[test]
    fn status_keeps_the_transition_time_and_names_the_problem() {
        let ca = make_ca("a");
        let mut kc = kubeconfig(base_spec());
        let desired = Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap();
        let t0 = OffsetDateTime::now_utc();
        let secret = written(&kc, &desired, &ca, t0);
        let SecretPlan::Keep { held, .. } = plan_secret(
            &desired,
            UID,
            Some(&ManagedSecret::from(secret.clone())),
            t0,
        ) else {
            panic!("kept")
        };
        let ready = Outcome::Ready {
            held: held.clone(),
            renew_at: t0,
            written: Some(WriteReason::Issue),
            message: "ok".into(),
            blocked: None,
        };
        let first = status(&kc, &ready, &Outputs::default(), None, t0);
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(first.conditions[0].reason, "Issued");
        assert_eq!(first.observed_generation, Some(2));
        assert_eq!(first.serial_number.as_deref(), Some(held.id.as_str()));
        assert_eq!(first.token_id, None);
        kc.status = Some(first.clone());
        let kept = Outcome::Ready {
            held: held.clone(),
            renew_at: t0,
            written: None,
            message: "ok".into(),
            blocked: None,
        };
        assert_eq!(
            status(
                &kc,
                &kept,
                &Outputs::default(),
                None,
                t0 + Duration::from_secs(60)
            ),
            first,
            "nothing changed, nothing to write"
        );
        let problem = Outcome::NotReady(Problem::new(
            Reason::CASecretNotFound,
            "the CA Secret x/y does not exist",
        ));
        let failed = status(
            &kc,
            &problem,
            &Outputs::default(),
            None,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(
            (
                failed.conditions[0].status.as_str(),
                failed.conditions[0].reason.as_str()
            ),
            ("False", "CASecretNotFound")
        );
        assert_ne!(
            failed.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        assert!(failed.renewal_time.is_none());
        assert!(
            failed.serial_number.is_none() && failed.not_after.is_none(),
            "a Kubeconfig that is not Ready holds nothing"
        );
        // The CA is away, the credential valid: Ready, the renewal time as it was.
        let blocked = Outcome::Ready {
            held,
            renew_at: t0 + Duration::from_secs(60),
            written: None,
            message: "valid, cannot be renewed".into(),
            blocked: Some(Problem::new(Reason::CASecretNotFound, "gone")),
        };
        let kept = status(
            &kc,
            &blocked,
            &Outputs::default(),
            None,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(
            (
                kept.conditions[0].status.as_str(),
                kept.conditions[0].reason.as_str()
            ),
            ("True", Reason::RenewalBlocked.as_str())
        );
        assert_eq!(kept.renewal_time, first.renewal_time);
        assert_eq!(kept.serial_number, first.serial_number);
    }

    #[test]
    fn the_next_look_is_at_the_renewal_or_sooner_with_copies() {
        let now = OffsetDateTime::now_utc();
        let held = Held {
            id: "1".into(),
            not_before: now,
            not_after: now + Duration::from_secs(7200),
            is_token: false,
            issued_at: Some(now),
            credential_id: Default::default(),
        };
        let ready = |renew_in: u64| Outcome::Ready {
            held: held.clone(),
            renew_at: now + Duration::from_secs(renew_in),
            written: None,
            message: String::new(),
            blocked: None,
        };
        let at = |secs: u64| Next::Renewal(Duration::from_secs(secs));
        // Within a second of the renewal time (the test's own clock moves on).
        let Next::Renewal(renewal) = requeue_for(&ready(3600), &Outputs::default()) else {
            panic!("a Ready Kubeconfig waits for its renewal");
        };
        assert!((3599..=3600).contains(&renewal.as_secs()), "{renewal:?}");
        let copies = Distributed::default();
        let with_copies = requeue_for(
            &ready(3600),
            &Outputs {
                distributed: Some(&copies),
                registered: None,
            },
        );
        assert_eq!(with_copies, at(copies::RECHECK.as_secs()));
        let refused = Distributed {
            reviews_refused: true,
            ..Distributed::default()
        };
        assert_eq!(
            requeue_for(
                &ready(3600),
                &Outputs {
                    distributed: Some(&refused),
                    registered: None
                }
            ),
            at(copies::RECHECK_REFUSED.as_secs())
        );
        assert_eq!(
            requeue_for(&ready(0), &Outputs::default()),
            Next::Renewal(Duration::ZERO)
        );
        let csr = Outcome::NotReady(Problem::new(Reason::CSRPending, "waiting"));
        assert_eq!(
            requeue_for(&csr, &Outputs::default()),
            Next::Retry(CSR_RETRY)
        );
        let refused = Outcome::NotReady(Problem::new(Reason::PolicyViolation, "no"));
        assert_eq!(
            requeue_for(&refused, &Outputs::default()),
            Next::Retry(RETRY_PROBLEM)
        );
    }
}
