//! What a Kubeconfig asks for, read once from its spec and its authority. Pure.

use crate::api::RENEW_ANNOTATION;
use std::time::Duration;

use kube::ResourceExt;
use kubeconfig_authority_pki::{
    Identity, KeyAlgorithm, MIN_VALIDITY, format_duration, parse_duration,
};

use crate::{
    api::{Kubeconfig, UID_GROUP_PREFIX},
    model::{
        Problem, Reason, Result,
        authority::{Resolved, ResolvedSigner},
        managed::{self},
    },
};

/// The Secret's kubeconfig keys when `secretRef.kubeconfigKeys` is unset: Capsule's and
/// Flux's.
pub const DEFAULT_KUBECONFIG_KEYS: [&str; 2] = ["kubeconfig", "value"];

/// Whether a Kubeconfig makes anything the garbage collector cannot remove by ownerReference
/// (cluster-scoped or other-namespace bindings, copies and Argo CD cluster Secrets, Roles, anything in a target
/// cluster: `remote` when its authority names one): only then does it carry the finalizer. Its
/// Secret is owned by it, and the tokens bound to that Secret die with it.
pub fn needs_finalizer(kc: &Kubeconfig, remote: bool) -> bool {
    let in_target = remote || kc.status.as_ref().is_some_and(|s| s.target.is_some());
    let spec = &kc.spec;
    let binds = spec.authorization.as_ref().is_some_and(|a| {
        !a.role_bindings.is_empty()
            || a.cluster_role_bindings
                .as_ref()
                .is_some_and(|c| !c.cluster_roles.is_empty())
    });
    let copies = kc
        .status
        .as_ref()
        .and_then(|s| s.distributed_copies)
        .is_some_and(|n| n > 0);
    // A CSR waiting for its signer is cluster-scoped: it is deleted by cleanup.
    let csr_pending = kc.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && (c.reason == Reason::CSRPending.as_str()
                    || c.reason == Reason::RenewalBlocked.as_str())
        })
    });
    // An Argo CD cluster Secret sits in another namespace, out of the garbage collector's
    // reach, like a copy.
    let registered = kc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == super::status::ARGO_CD && c.status == "True")
    });
    in_target
        || binds
        || spec.distribution.is_some()
        || copies
        || spec.argo_cd.is_some()
        || registered
        || csr_pending
        || self_impersonating(kc).is_some()
}

/// The credential a Kubeconfig asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// A client certificate with a fresh key.
    Certificate {
        identity: Identity,
        algorithm: KeyAlgorithm,
    },
    /// A token of a ServiceAccount of the Kubeconfig's namespace.
    Token {
        service_account: String,
        audiences: Vec<String>,
    },
}

/// What the spec and the authority ask the Secret to hold.
#[derive(Debug, Clone)]
pub struct Desired {
    pub credential: Credential,
    /// The user's name inside the kubeconfig file.
    pub user_name: String,
    pub validity: Duration,
    pub renew_before: Option<Duration>,
    pub kubeconfig_keys: Vec<String>,
    pub certificate_keys: bool,
    pub secret_name: String,
    pub server: String,
    pub server_ca_pem: String,
    /// A digest of everything above plus the signer: when it changes, reissue.
    pub inputs_digest: String,
    /// A renewal asked for (the annotation's value) and not acted on yet.
    pub renew_requested: Option<String>,
}

impl Desired {
    /// Reads the spec; a bad value is a [`Problem`] naming the field.
    pub fn from_spec(kc: &Kubeconfig, uid: &str, authority: &Resolved) -> Result<Self, Problem> {
        let spec = &kc.spec;
        let namespace = kc.namespace().unwrap_or_default();
        let invalid = |field: &str, e: &dyn std::fmt::Display| {
            Problem::new(Reason::InvalidSpec, format!("spec.{field}: {e}"))
        };
        let validity = parse_duration(&spec.validity).map_err(|e| invalid("validity", &e))?;
        let renew_before = spec
            .renew_before
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| invalid("renewBefore", &e))?;
        let mismatch = |message: &str| Problem::new(Reason::SignerMismatch, message.to_string());
        let (credential, user_name) = match (
            &spec.username,
            &spec.service_account_ref,
            &authority.signer,
        ) {
            (Some(_), _, ResolvedSigner::Token { .. }) => {
                return Err(mismatch(
                    "spec.username asks for a certificate, but the authority's signer is serviceAccountToken: use spec.serviceAccountRef, or an authority that signs certificates",
                ));
            }
            (Some(username), _, _) => {
                if validity < MIN_VALIDITY {
                    return Err(invalid(
                        "validity",
                        &format!(
                            "{} is too short: a certificate is asked for at least {}, so that it is renewed at least a minute after it is issued and before it expires",
                            spec.validity,
                            format_duration(MIN_VALIDITY)
                        ),
                    ));
                }
                let algorithm = match &spec.private_key {
                    None => KeyAlgorithm::default(),
                    Some(pk) => KeyAlgorithm::from_parts(pk.algorithm.as_str(), pk.size)
                        .map_err(|e| invalid("privateKey", &e))?,
                };
                let mut identity =
                    Identity::new(username.as_str(), spec.groups.iter().map(String::as_str))
                        .and_then(|i| i.with_kubeconfig_name(&kc.name_any()))
                        .map_err(|e| invalid("username/groups", &e))?;
                identity
                    .add_group(format!("{UID_GROUP_PREFIX}{uid}"))
                    .map_err(|e| invalid("metadata.uid", &e))?;
                let user = identity.username.clone();
                (
                    Credential::Certificate {
                        identity,
                        algorithm,
                    },
                    user,
                )
            }
            (None, Some(sa), ResolvedSigner::Token { audiences }) => {
                if validity < MIN_TOKEN_LIFETIME {
                    return Err(invalid(
                        "validity",
                        &"a ServiceAccount token lives at least 10m (the TokenRequest API's minimum)",
                    ));
                }
                (
                    Credential::Token {
                        service_account: sa.name.clone(),
                        audiences: audiences.clone(),
                    },
                    format!("system:serviceaccount:{namespace}:{}", sa.name),
                )
            }
            (None, Some(_), _) => {
                return Err(mismatch(
                    "spec.serviceAccountRef asks for a token, but the authority's signer makes certificates: use an authority whose signer is serviceAccountToken",
                ));
            }
            (None, None, _) => {
                return Err(invalid("username", &"set username or serviceAccountRef"));
            }
        };
        let kubeconfig_keys = spec
            .secret_ref
            .kubeconfig_keys
            .clone()
            .unwrap_or_else(|| DEFAULT_KUBECONFIG_KEYS.map(String::from).to_vec());
        let certificate_keys = spec.secret_ref.certificate_keys.unwrap_or(true)
            && matches!(credential, Credential::Certificate { .. });
        let inputs = Inputs {
            certificate_keys,
            credential: match &credential {
                Credential::Certificate {
                    identity,
                    algorithm,
                } => CredentialInputs::Certificate {
                    algorithm: algorithm.name(),
                    identity: IdentityInputs {
                        groups: &identity.groups,
                        username: &identity.username,
                    },
                },
                Credential::Token {
                    service_account, ..
                } => CredentialInputs::Token { service_account },
            },
            kubeconfig_keys: &kubeconfig_keys,
            renew_before: renew_before.map(|d| d.as_secs()),
            server: &authority.server,
            server_ca: &authority.server_ca_pem,
            signer: match &authority.signer {
                ResolvedSigner::Ca(ca) => SignerInputs::Ca(ca.certificate_pem()),
                ResolvedSigner::Csr { signer_name } => SignerInputs::Csr(signer_name),
                ResolvedSigner::Token { audiences } => SignerInputs::Token(audiences),
            },
            validity: validity.as_secs(),
        };
        let inputs_digest = serde_json::to_vec(&inputs)
            .map(|bytes| managed::digest(&bytes))
            .map_err(|e| {
                Problem::new(
                    Reason::InvalidSpec,
                    format!("the spec could not be written as JSON: {e}"),
                )
            })?;
        Ok(Self {
            credential,
            user_name,
            validity,
            renew_before,
            kubeconfig_keys,
            certificate_keys,
            secret_name: spec.secret_ref.name.clone(),
            server: authority.server.clone(),
            server_ca_pem: authority.server_ca_pem.clone(),
            inputs_digest,
            renew_requested: renew_requested(kc).map(String::from),
        })
    }
}

/// What the inputs digest covers, written as the JSON object earlier versions built as a
/// `serde_json::Value` (keys in sorted order, as a `Value` writes them), so that the Secrets
/// they wrote keep their digest; serialized directly, without building the value first.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Inputs<'a> {
    certificate_keys: bool,
    credential: CredentialInputs<'a>,
    kubeconfig_keys: &'a [String],
    renew_before: Option<u64>,
    server: &'a str,
    #[serde(rename = "serverCA")]
    server_ca: &'a str,
    signer: SignerInputs<'a>,
    validity: u64,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum CredentialInputs<'a> {
    Certificate {
        algorithm: &'a str,
        identity: IdentityInputs<'a>,
    },
    Token {
        #[serde(rename = "serviceAccount")]
        service_account: &'a str,
    },
}

#[derive(serde::Serialize)]
struct IdentityInputs<'a> {
    groups: &'a [String],
    username: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum SignerInputs<'a> {
    Ca(&'a str),
    Csr(&'a str),
    Token(&'a [String]),
}

/// The renewal the annotation asks for, unless the status says it was done.
pub fn renew_requested(kc: &Kubeconfig) -> Option<&str> {
    let asked = kc.annotations().get(RENEW_ANNOTATION)?;
    let done = kc
        .status
        .as_ref()
        .and_then(|s| s.renew_requested_at.as_ref());
    (done != Some(asked)).then_some(asked.as_str())
}

/// The shortest token lifetime the TokenRequest API accepts.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

pub fn self_impersonating(kc: &Kubeconfig) -> Option<&str> {
    kc.spec
        .service_account_ref
        .as_ref()
        .filter(|sa| sa.impersonate_self == Some(true))
        .map(|sa| sa.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::kubeconfig::fixtures::*;
    use serde_json::json;

    #[test]
    fn the_identity_is_unique_to_the_object() {
        let ca = make_ca("a");
        let desired = Desired::from_spec(&kubeconfig(base_spec()), UID, &resolved(&ca)).unwrap();
        let Credential::Certificate {
            identity,
            algorithm,
        } = &desired.credential
        else {
            panic!("a certificate")
        };
        assert_eq!(identity.username, "susan");
        assert_eq!(
            identity.groups,
            ["dev", "kubeconfig:susan", &format!("kubeconfig-uid:{UID}")]
        );
        assert_eq!(desired.kubeconfig_keys, ["kubeconfig", "value"]);
        assert_eq!(*algorithm, KeyAlgorithm::EcdsaP256);
    }

    /// The inputs digest as versions up to 0.1 computed it, through a `serde_json::Value`.
    fn digest_of_earlier_versions(desired: &Desired, authority: &Resolved) -> String {
        let signer = match (&desired.credential, &authority.signer) {
            (Credential::Certificate { .. }, ResolvedSigner::Ca(ca)) => {
                json!({"ca": ca.certificate_pem()})
            }
            (Credential::Certificate { .. }, ResolvedSigner::Csr { signer_name }) => {
                json!({"csr": signer_name})
            }
            (_, ResolvedSigner::Token { audiences }) => json!({"token": audiences}),
            _ => unreachable!(),
        };
        let inputs = json!({
            "credential": match &desired.credential {
                Credential::Certificate { identity, algorithm } => json!({"identity": identity, "algorithm": algorithm.name()}),
                Credential::Token { service_account, .. } => json!({"serviceAccount": service_account}),
            },
            "validity": desired.validity.as_secs(),
            "renewBefore": desired.renew_before.map(|d| d.as_secs()),
            "kubeconfigKeys": desired.kubeconfig_keys,
            "certificateKeys": desired.certificate_keys,
            "server": authority.server,
            "serverCA": authority.server_ca_pem,
            "signer": signer,
        });
        managed::digest(inputs.to_string().as_bytes())
    }

    #[test]
    fn the_inputs_digest_is_the_one_earlier_versions_wrote() {
        let ca = make_ca("a");
        let with_ca = resolved(&ca);
        let mut through_csr = resolved(&ca);
        through_csr.signer = ResolvedSigner::Csr {
            signer_name: "example.com/signer".into(),
        };
        let mut tokens = resolved(&ca);
        tokens.signer = ResolvedSigner::Token {
            audiences: vec!["a".into(), "b \"quoted\"".into()],
        };
        let mut renewing = base_spec();
        renewing["renewBefore"] = json!("1h");
        renewing["privateKey"] = json!({"algorithm": "RSA", "size": 2048});
        renewing["secretRef"] =
            json!({"name": "s", "kubeconfigKeys": ["config"], "certificateKeys": false});
        let mut token = base_spec();
        token.as_object_mut().unwrap().remove("username");
        token["serviceAccountRef"] = json!({"name": "flux"});
        let cases = [
            (base_spec(), &with_ca),
            (renewing.clone(), &with_ca),
            (renewing, &through_csr),
            (token, &tokens),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (spec, authority) in cases {
            let desired = Desired::from_spec(&kubeconfig(spec), UID, authority).unwrap();
            assert_eq!(
                desired.inputs_digest,
                digest_of_earlier_versions(&desired, authority)
            );
            seen.insert(desired.inputs_digest);
        }
        assert_eq!(seen.len(), 4, "every case has a digest of its own");
    }

    #[test]
    fn bad_spec_values_name_the_field() {
        let ca = make_ca("a");
        let mut spec = base_spec();
        spec["validity"] = json!("7d");
        let problem = Desired::from_spec(&kubeconfig(spec), UID, &resolved(&ca)).unwrap_err();
        assert_eq!(problem.reason, Reason::InvalidSpec);
        assert!(
            problem.message.starts_with("spec.validity:") && problem.message.contains("168h"),
            "{}",
            problem.message
        );
        let mut spec = base_spec();
        spec["privateKey"] = json!({"algorithm": "RSA", "size": 1024});
        assert!(
            Desired::from_spec(&kubeconfig(spec), UID, &resolved(&ca))
                .unwrap_err()
                .message
                .starts_with("spec.privateKey:")
        );
    }

    #[test]
    fn a_finalizer_only_when_something_outlives_the_garbage_collector() {
        assert!(
            !needs_finalizer(&kubeconfig(base_spec()), false),
            "a plain Secret is owned"
        );
        let mut binds = base_spec();
        binds["authorization"] = json!({"clusterRoleBindings": {"clusterRoles": ["view"]}});
        assert!(needs_finalizer(&kubeconfig(binds), false));
        let mut copies = base_spec();
        copies["distribution"] = json!({"namespaceSelector": {}});
        assert!(needs_finalizer(&kubeconfig(copies), false));
        let mut argo_cd = base_spec();
        argo_cd["argoCD"] = json!({});
        assert!(needs_finalizer(&kubeconfig(argo_cd), false));
        // Registered, then argoCD removed from the spec: the finalizer stays until it is gone.
        let mut registered = kubeconfig(base_spec());
        registered.status = Some(serde_json::from_value(json!({"conditions": [{"type": "ArgoCD", "status": "True", "reason": "Registered", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})).unwrap());
        assert!(needs_finalizer(&registered, false));
        let mut waiting = kubeconfig(base_spec());
        waiting.status = Some(serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": "False", "reason": "CSRPending", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})).unwrap());
        assert!(
            needs_finalizer(&waiting, false),
            "a pending CSR is cluster-scoped"
        );
        assert!(
            needs_finalizer(&kubeconfig(base_spec()), true),
            "a target cluster is out of the garbage collector's reach"
        );
    }

    #[test]
    fn a_renewal_request_counts_until_the_status_records_it() {
        let mut kc = kubeconfig(base_spec());
        assert_eq!(renew_requested(&kc), None);
        kc.metadata.annotations = Some(
            [(RENEW_ANNOTATION.to_string(), "t1".to_string())]
                .into_iter()
                .collect(),
        );
        assert_eq!(renew_requested(&kc), Some("t1"));
        kc.status = Some(crate::api::KubeconfigStatus {
            renew_requested_at: Some("t1".into()),
            ..Default::default()
        });
        assert_eq!(
            renew_requested(&kc),
            None,
            "the same value again does nothing"
        );
        kc.metadata.annotations = Some(
            [(RENEW_ANNOTATION.to_string(), "t2".to_string())]
                .into_iter()
                .collect(),
        );
        assert_eq!(renew_requested(&kc), Some("t2"));
    }
}
