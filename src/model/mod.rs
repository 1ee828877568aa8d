//! Values every controller shares: no client, no I/O. The reasons of every condition, the
//! problems a person fixes and the errors retried with backoff, the credential a Secret holds
//! and the cached view of a managed Secret, the resolved authority, and condition bookkeeping.

pub mod authority;
pub mod credential;
pub mod labels;
pub mod managed;
pub mod reason;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub use reason::Reason;

/// Why a Kubeconfig cannot be issued now: a reason for the condition, and a message that says
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// See [`Reason::blocks_renewal_only`].
    pub fn blocks_renewal_only(&self) -> bool {
        self.reason.blocks_renewal_only()
    }
}

/// What a reconcile writes, each bounded on its own by the Kubeconfig controller's write budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Written {
    Secret,
    Bindings,
    Copies,
}

/// At most this many writes of one kind per Kubeconfig in [`WRITE_WINDOW`], whatever the input
/// (a renewal schedule, someone deleting the Secret in a loop, another controller fighting over
/// a binding). Issuance and three repairs fit in one window.
pub const WRITES_PER_WINDOW: usize = 5;
pub const WRITE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A condition of `type_` that keeps the `lastTransitionTime` of the `previous` one of that type
/// while its status holds. Pure.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: Reason,
    message: String,
    observed_generation: Option<i64>,
    now: time::OffsetDateTime,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation,
        last_transition_time,
    }
}

/// A Kubernetes timestamp (seconds) from a `time` one.
pub fn to_time(t: time::OffsetDateTime) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Errors that stop a reconcile and are retried with backoff: the API server failed or refused
/// a request. Problems a person must fix (a missing CA, a conflicting Secret) are not errors:
/// they are reported in status and events, and the object waits for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Startup(String),
    /// A target cluster that cannot be reached, while something must be done there.
    #[error("{0}")]
    TargetUnreachable(String),
    /// A target cluster that as many reconciles as may use it at once are using: the
    /// reconcile is tried again soon ([`Error::retry_after`]), neither logged nor counted as
    /// a failure.
    #[error("{0}")]
    TargetBusy(String),
    #[error(
        "{what:?} written {WRITES_PER_WINDOW} times within a minute already; the next write waits until {until}"
    )]
    RateLimited {
        what: Written,
        until: time::OffsetDateTime,
    },
}

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// A short machine-readable reason, for metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Kube { .. } => Reason::APIError,
            Error::MissingMetadata(_) => Reason::InvalidObject,
            Error::Finalizer(_) => Reason::FinalizerError,
            Error::TimedOut(_) => Reason::APIError,
            Error::Startup(_) => Reason::StartupError,
            Error::TargetUnreachable(_) => Reason::TargetUnreachable,
            // Never counted: `kubeconfig::reconcile` turns it into a requeue before the error
            // policy sees it; named here only because the match must be whole.
            Error::TargetBusy(_) => Reason::TargetUnreachable,
            Error::RateLimited { .. } => Reason::RateLimited,
        }
    }

    /// When to try again: at the time a rate limit names, else after a short backoff.
    pub fn retry_after(&self) -> std::time::Duration {
        match self {
            Error::RateLimited { until, .. } => {
                std::time::Duration::try_from(*until - time::OffsetDateTime::now_utc())
                    .unwrap_or_default()
                    .max(std::time::Duration::from_millis(100))
            }
            Error::TargetBusy(_) => std::time::Duration::from_secs(1),
            _ => std::time::Duration::from_secs(5),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
