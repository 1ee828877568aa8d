//! Every condition reason the controllers report, in one place. A reason is what a person or
//! an alert keys on; the message beside it says what to fix.

use std::fmt;

/// A condition reason (and the label of `kubeconfig_authority_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // Ready=True on a Kubeconfig: what was last done to its Secret.
    Issued,
    Renewed,
    Repaired,
    Reissued,
    /// Valid, but the authority cannot sign now.
    RenewalBlocked,

    // Ready=False on a Kubeconfig.
    NoAuthority,
    AuthorityNotFound,
    InvalidAuthority,
    CASecretNotFound,
    CASecretInvalid,
    CANotACA,
    CAExpired,
    CABundleNotFound,
    CABundleInvalid,
    KubeconfigSecretNotFound,
    KubeconfigSecretInvalid,
    SecretConflict,
    RBACFailed,
    InvalidSpec,
    PolicyViolation,
    NamespaceNotAllowed,
    SignerMismatch,
    ServiceAccountNotFound,
    CSRPending,
    CSRDenied,
    CSRFailed,
    CSRApprovalRefused,
    IssueFailed,
    TargetUnreachable,

    // Distributed on a Kubeconfig (with SecretConflict and InvalidSpec).
    Distributed,
    DistributionRefused,

    // ArgoCD on a Kubeconfig (with SecretConflict).
    Registered,
    RegistrationRefused,

    // CAKeyIsolated on an Authority or ClusterAuthority.
    CAKeyWithRequesters,
    CAKeyApart,

    // Ready on a KubeconfigGenerator.
    Generated,
    Pending,
    Errors,
    InvalidTarget,

    // Warning events of onboarding (annotated ServiceAccounts).
    KubeconfigConflict,
    InvalidAnnotation,

    // Errors retried with backoff (metrics and logs, never a condition).
    APIError,
    InvalidObject,
    FinalizerError,
    StartupError,
    RateLimited,
}

impl Reason {
    /// As written in conditions, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "Issued",
            Self::Renewed => "Renewed",
            Self::Repaired => "Repaired",
            Self::Reissued => "Reissued",
            Self::RenewalBlocked => "RenewalBlocked",
            Self::NoAuthority => "NoAuthority",
            Self::AuthorityNotFound => "AuthorityNotFound",
            Self::InvalidAuthority => "InvalidAuthority",
            Self::CASecretNotFound => "CASecretNotFound",
            Self::CASecretInvalid => "CASecretInvalid",
            Self::CANotACA => "CANotACA",
            Self::CAExpired => "CAExpired",
            Self::CABundleNotFound => "CABundleNotFound",
            Self::CABundleInvalid => "CABundleInvalid",
            Self::KubeconfigSecretNotFound => "KubeconfigSecretNotFound",
            Self::KubeconfigSecretInvalid => "KubeconfigSecretInvalid",
            Self::SecretConflict => "SecretConflict",
            Self::RBACFailed => "RBACFailed",
            Self::InvalidSpec => "InvalidSpec",
            Self::PolicyViolation => "PolicyViolation",
            Self::NamespaceNotAllowed => "NamespaceNotAllowed",
            Self::SignerMismatch => "SignerMismatch",
            Self::ServiceAccountNotFound => "ServiceAccountNotFound",
            Self::CSRPending => "CSRPending",
            Self::CSRDenied => "CSRDenied",
            Self::CSRFailed => "CSRFailed",
            Self::CSRApprovalRefused => "CSRApprovalRefused",
            Self::IssueFailed => "IssueFailed",
            Self::TargetUnreachable => "TargetUnreachable",
            Self::Distributed => "Distributed",
            Self::DistributionRefused => "DistributionRefused",
            Self::Registered => "Registered",
            Self::RegistrationRefused => "RegistrationRefused",
            Self::CAKeyWithRequesters => "CAKeyWithRequesters",
            Self::CAKeyApart => "CAKeyApart",
            Self::Generated => "Generated",
            Self::Pending => "Pending",
            Self::Errors => "Errors",
            Self::InvalidTarget => "InvalidTarget",
            Self::KubeconfigConflict => "KubeconfigConflict",
            Self::InvalidAnnotation => "InvalidAnnotation",
            Self::APIError => "APIError",
            Self::InvalidObject => "InvalidObject",
            Self::FinalizerError => "FinalizerError",
            Self::StartupError => "StartupError",
            Self::RateLimited => "RateLimited",
        }
    }

    /// Whether the reason only keeps the authority from signing now (its CA, its CA bundle or
    /// its signer is unavailable or broken), as opposed to a refusal of the Kubeconfig itself
    /// (its spec, its authority's policy, its Secret's name, its bindings). A valid credential
    /// already held outlives the first kind, never the second.
    pub fn blocks_renewal_only(self) -> bool {
        matches!(
            self,
            Self::CASecretNotFound
                | Self::CASecretInvalid
                | Self::CAExpired
                | Self::CANotACA
                | Self::CABundleNotFound
                | Self::CABundleInvalid
                | Self::KubeconfigSecretNotFound
                | Self::KubeconfigSecretInvalid
                | Self::InvalidAuthority
                | Self::IssueFailed
                | Self::CSRPending
                | Self::CSRFailed
                | Self::CSRApprovalRefused
                | Self::TargetUnreachable
        )
    }

    /// The reasons of a Ready credential.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            Self::Issued | Self::Renewed | Self::Repaired | Self::Reissued | Self::RenewalBlocked
        )
    }

    /// The reason a condition carries, when it is one of these.
    pub fn parse(text: &str) -> Option<Self> {
        ALL.iter().copied().find(|r| r.as_str() == text)
    }
}

/// Every reason (for parsing and tests).
pub const ALL: [Reason; 46] = [
    Reason::Issued,
    Reason::Renewed,
    Reason::Repaired,
    Reason::Reissued,
    Reason::RenewalBlocked,
    Reason::NoAuthority,
    Reason::AuthorityNotFound,
    Reason::InvalidAuthority,
    Reason::CASecretNotFound,
    Reason::CASecretInvalid,
    Reason::CANotACA,
    Reason::CAExpired,
    Reason::CABundleNotFound,
    Reason::CABundleInvalid,
    Reason::KubeconfigSecretNotFound,
    Reason::KubeconfigSecretInvalid,
    Reason::SecretConflict,
    Reason::RBACFailed,
    Reason::InvalidSpec,
    Reason::PolicyViolation,
    Reason::NamespaceNotAllowed,
    Reason::SignerMismatch,
    Reason::ServiceAccountNotFound,
    Reason::CSRPending,
    Reason::CSRDenied,
    Reason::CSRFailed,
    Reason::CSRApprovalRefused,
    Reason::IssueFailed,
    Reason::TargetUnreachable,
    Reason::Distributed,
    Reason::DistributionRefused,
    Reason::Registered,
    Reason::RegistrationRefused,
    Reason::CAKeyWithRequesters,
    Reason::CAKeyApart,
    Reason::Generated,
    Reason::Pending,
    Reason::Errors,
    Reason::InvalidTarget,
    Reason::KubeconfigConflict,
    Reason::InvalidAnnotation,
    Reason::APIError,
    Reason::InvalidObject,
    Reason::FinalizerError,
    Reason::StartupError,
    Reason::RateLimited,
];

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_and_is_named_once() {
        let mut names: Vec<&str> = ALL.iter().map(|r| r.as_str()).collect();
        for r in ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    /// Every reason is written through this enum: no other file under `src/` spells one as a
    /// string literal outside its tests (a condition type that shares a name is allowed once).
    #[test]
    fn no_reason_is_spelled_outside_the_enum() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("model/reason.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (n, line) in code.lines().enumerate() {
                    for r in ALL {
                        let quoted = format!("\"{}\"", r.as_str());
                        let condition_type = line.contains("pub const") && line.contains("&str");
                        if line.contains(&quoted) && !condition_type {
                            offenders.push(format!("{}:{}: {quoted}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "use Reason instead: {offenders:#?}");
    }
}
