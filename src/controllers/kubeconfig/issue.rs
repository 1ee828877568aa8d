//! Issuing the credential a Kubeconfig asks for: a certificate signed here, a certificate
//! signed through the CSR API, or a ServiceAccount token from the TokenRequest API.

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        certificates::v1::{
            CertificateSigningRequest, CertificateSigningRequestCondition,
            CertificateSigningRequestSpec,
        },
        core::v1::{Secret, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use kubeconfig_authority_pki::{
    CertificateRequest, Identity, KeyAlgorithm, NewRequest, inspect_certificate, parse_certificates,
};
use time::OffsetDateTime;

use super::{
    Context,
    request::{Credential, Desired},
    secret::secret_shell,
};
use crate::{
    api::{FIELD_MANAGER, KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig},
    client::cluster::Cluster,
    model::{
        Error, Problem, Reason, Result,
        authority::{Resolved, ResolvedSigner},
        credential::{Held, Issued, IssuedCredential, PendingCsr, token_held},
    },
};

/// A new key (from [`super::keys::KeyPool`]) and a certificate signing request made with it.
/// Signing with an RSA key takes milliseconds and is done on the blocking pool; the other
/// signatures take well under one.
async fn new_request(
    identity: &Identity,
    algorithm: KeyAlgorithm,
    ctx: &Context,
) -> Result<NewRequest, String> {
    let key = ctx.keys.fresh(algorithm).await.map_err(|e| e.to_string())?;
    if !algorithm.is_rsa() {
        return CertificateRequest::create_with_key(identity, key).map_err(|e| e.to_string());
    }
    let identity = identity.clone();
    match tokio::task::spawn_blocking(move || CertificateRequest::create_with_key(&identity, key))
        .await
    {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!(
            "signing the request with the {algorithm} key stopped: {e}"
        )),
    }
}

/// Issues the desired credential with the resolved signer. `Ok(Err(problem))` when it cannot
/// be issued now (a CSR not yet signed is one such problem).
pub async fn issue(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    resolved: &Resolved,
    cluster: &Cluster,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<Result<Issued, Problem>> {
    let in_target = resolved.target.is_some();
    match (&desired.credential, &resolved.signer) {
        (
            Credential::Certificate {
                identity,
                algorithm,
            },
            ResolvedSigner::Ca(ca),
        ) => Ok(
            match async {
                let key = ctx.keys.fresh(*algorithm).await?;
                ca.issue_with_key(identity, key, desired.validity, now)
            }
            .await
            {
                Ok(issued) => Ok(Issued {
                    held: Held {
                        id: issued.serial.clone(),
                        credential_id: crate::api::CredentialId::Certificate(issued.fingerprint),
                        not_before: issued.not_before,
                        not_after: issued.not_after,
                        is_token: false,
                        issued_at: Some(now),
                    },
                    note: issued.clamped_to_ca.then(|| {
                        format!(
                            "the validity was cut to the CA's expiry at {}",
                            ca.not_after()
                        )
                    }),
                    credential: IssuedCredential::Certificate {
                        certificate_pem: issued.certificate_pem,
                        private_key_pem: issued.private_key_pem,
                    },
                }),
                Err(e) => Err(Problem::new(Reason::IssueFailed, e.to_string())),
            },
        ),
        (
            Credential::Certificate {
                identity,
                algorithm,
            },
            ResolvedSigner::Csr { signer_name },
        ) => {
            let csr = Csr {
                identity,
                algorithm: *algorithm,
                signer_name,
            };
            through_csr(kc, uid, desired, csr, &cluster.client, ctx).await
        }
        (
            Credential::Token {
                service_account,
                audiences,
            },
            ResolvedSigner::Token { .. },
        ) => {
            let token_for = TokenFor {
                service_account,
                audiences,
                in_target,
            };
            token(kc, uid, desired, token_for, &cluster.client).await
        }
        _ => Ok(Err(Problem::new(
            Reason::SignerMismatch,
            "the Kubeconfig's credential does not match its authority's signer",
        ))),
    }
}

/// The ServiceAccount a token is for, in the Kubeconfig's namespace of the cluster whose
/// client asks.
struct TokenFor<'a> {
    service_account: &'a str,
    audiences: &'a [String],
    /// The ServiceAccount is in a target cluster: the token is bound to a Secret made there
    /// for it (without ownerReference, which the target could not resolve).
    in_target: bool,
}

/// A token bound to the kubeconfig Secret (or, for a target, to a Secret of the same name in
/// the target): deleting that Secret (and so the Kubeconfig) invalidates it at once. The
/// Secret is created first, empty, when it does not exist yet.
async fn token(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    token_for: TokenFor<'_>,
    client: &Client,
) -> Result<Result<Issued, Problem>> {
    let TokenFor {
        service_account,
        audiences,
        in_target,
    } = token_for;
    let namespace = kc.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    // The token is bound to the Secret's UID: an existing Secret (ours: the plan checked) keeps
    // its data while the new token is made; a missing one is created empty first. (Applying
    // the empty shell over an existing Secret would drop its data for a moment.)
    let existing = secrets
        .get_metadata_opt(&desired.secret_name)
        .await
        .map_err(Error::kube(format!(
            "reading Secret {}",
            desired.secret_name
        )))?;
    let mut shell = secret_shell(kc, uid, &desired.secret_name);
    if in_target {
        shell.metadata.owner_references = None;
    }
    let secret_uid = match existing {
        Some(meta) => meta.uid(),
        None => secrets
            .patch(
                &desired.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&shell),
            )
            .await
            .map_err(Error::kube(format!(
                "writing Secret {}",
                desired.secret_name
            )))?
            .uid(),
    };
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: audiences.to_vec(),
            expiration_seconds: Some(desired.validity.as_secs() as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(desired.secret_name.clone()),
                uid: secret_uid,
            }),
        },
        status: None,
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_subresource::<_, TokenRequest>(
            "token",
            service_account,
            &PostParams::default(),
            &request,
        )
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Ok(Err(Problem::new(
                Reason::ServiceAccountNotFound,
                format!(
                    "ServiceAccount {namespace}/{service_account} does not exist; create it or fix spec.serviceAccountRef"
                ),
            )));
        }
        Err(e) => {
            return Err(Error::Kube {
                action: format!("requesting a token for ServiceAccount {service_account}"),
                source: e,
            });
        }
    };
    let Some(token) = answer.status.map(|s| s.token) else {
        return Ok(Err(Problem::new(
            Reason::IssueFailed,
            "the TokenRequest API answered without a token",
        )));
    };
    let Some(held) = token_held(&token) else {
        return Ok(Err(Problem::new(
            Reason::IssueFailed,
            "the token the API server issued has no readable expiry",
        )));
    };
    // The API server may grant less than asked (its --service-account-max-token-expiration).
    let asked = desired.validity.as_secs() as i64;
    let granted = (held.not_after - held.not_before).whole_seconds();
    let note = (granted + 60 < asked)
        .then(|| format!("the API server granted {granted}s of the {asked}s asked for"));
    Ok(Ok(Issued {
        credential: IssuedCredential::Token(token),
        held,
        note,
    }))
}

/// The generateName of the CSRs the controller creates; each is deleted once its certificate
/// is taken (or it failed).
const CSR_PREFIX: &str = "kubeconfig-";

/// What a CSR asks for.
struct Csr<'a> {
    identity: &'a Identity,
    algorithm: KeyAlgorithm,
    signer_name: &'a str,
}

/// A certificate through the CSR API (of the cluster whose client asks): create a request with
/// a key generated here, approve it, and take the certificate once the signer has issued it
/// (the reconcile is requeued while it waits; a CSR watch brings it back sooner).
async fn through_csr(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    csr: Csr<'_>,
    client: &Client,
    ctx: &Context,
) -> Result<Result<Issued, Problem>> {
    let Csr {
        identity,
        algorithm,
        signer_name,
    } = csr;
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let pending = ctx
        .pending_csrs
        .lock()
        .ok()
        .and_then(|mut p| p.remove(uid))
        .filter(|p| p.inputs_digest == desired.inputs_digest);
    if let Some(pending) = pending {
        let csr = api
            .get_opt(&pending.name)
            .await
            .map_err(Error::kube(format!("reading CSR {}", pending.name)))?;
        if let Some(csr) = csr {
            let conditions = csr
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let failed = conditions
                .iter()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True");
            if let Some(c) = failed {
                crate::client::delete_ignoring_absent(api.clone(), &pending.name).await?;
                return Ok(Err(Problem::new(
                    if c.type_ == "Denied" {
                        Reason::CSRDenied
                    } else {
                        Reason::CSRFailed
                    },
                    format!(
                        "CertificateSigningRequest {} was {} by {signer_name}: {} {}; a new request is made when the spec or authority changes",
                        pending.name,
                        c.type_.to_lowercase(),
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default()
                    ),
                )));
            }
            let certificate = csr
                .status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .filter(|c| !c.0.is_empty());
            if let Some(certificate) = certificate {
                let pem = String::from_utf8_lossy(&certificate.0).into_owned();
                crate::client::delete_ignoring_absent(api.clone(), &pending.name).await?;
                let info = parse_certificates(&pem)
                    .ok()
                    .and_then(|ders| ders.first().and_then(|d| inspect_certificate(d).ok()));
                let Some(info) = info else {
                    return Ok(Err(Problem::new(
                        Reason::CSRFailed,
                        format!("the signer {signer_name} returned no readable certificate"),
                    )));
                };
                let note = (info.identity != *identity).then(|| {
                    format!(
                        "the signer issued the identity {} with groups {:?}",
                        info.identity.username, info.identity.groups
                    )
                });
                return Ok(Ok(Issued {
                    held: Held::from(info),
                    note,
                    credential: IssuedCredential::Certificate {
                        certificate_pem: pem,
                        private_key_pem: pending.private_key_pem,
                    },
                }));
            }
            let name = pending.name.clone();
            if let Ok(mut p) = ctx.pending_csrs.lock() {
                p.insert(uid.to_string(), pending);
            }
            return Ok(Err(waiting(&name, signer_name)));
        }
    }

    // A new request.
    let new = match new_request(identity, algorithm, ctx).await {
        Ok(new) => new,
        Err(e) => return Ok(Err(Problem::new(Reason::IssueFailed, e.to_string()))),
    };
    let mut usages = vec!["client auth".to_string(), "digital signature".to_string()];
    if algorithm.is_rsa() {
        usages.push("key encipherment".into());
    }
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(CSR_PREFIX.into()),
            labels: Some(
                [
                    (KUBECONFIG_UID_LABEL.to_string(), uid.to_string()),
                    (
                        crate::api::MANAGED_BY_LABEL.to_string(),
                        crate::api::MANAGED_BY.to_string(),
                    ),
                ]
                .into(),
            ),
            annotations: Some(
                [(
                    KUBECONFIG_ANNOTATION.to_string(),
                    format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any()),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(new.request_pem.into_bytes()),
            signer_name: signer_name.to_string(),
            expiration_seconds: Some(desired.validity.as_secs().max(600) as i32),
            usages: Some(usages),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(Error::kube("creating a CertificateSigningRequest"))?;
    let name = created.name_any();
    match approve(&api, created, kc).await {
        Ok(()) => {}
        Err(kube::Error::Api(status)) if status.code == 403 => {
            crate::client::delete_ignoring_absent(api.clone(), &name).await?;
            return Ok(Err(Problem::new(
                Reason::CSRApprovalRefused,
                format!(
                    "the controller may not approve requests for signer {signer_name} ({}); grant it the verb approve on signers/{signer_name}",
                    status.message
                ),
            )));
        }
        Err(e) => {
            crate::client::delete_ignoring_absent(api.clone(), &name).await?;
            return Err(Error::Kube {
                action: format!("approving CertificateSigningRequest {name}"),
                source: e,
            });
        }
    }
    if let Ok(mut p) = ctx.pending_csrs.lock() {
        p.insert(
            uid.to_string(),
            PendingCsr {
                name: name.clone(),
                private_key_pem: new.private_key_pem,
                inputs_digest: desired.inputs_digest.clone(),
            },
        );
    }
    Ok(Err(waiting(&name, signer_name)))
}

/// Adds the Approved condition; on a conflict (the CSR changed meanwhile) reads it again and
/// retries once.
async fn approve(
    api: &Api<CertificateSigningRequest>,
    mut csr: CertificateSigningRequest,
    kc: &Kubeconfig,
) -> Result<(), kube::Error> {
    for attempt in 0..2 {
        let name = csr.name_any();
        csr.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("KubeconfigAuthorityApproved".into()),
                message: Some(format!(
                    "approved by kubeconfig-authority for Kubeconfig {}/{}, whose authority's policy allows it",
                    kc.namespace().unwrap_or_default(),
                    kc.name_any()
                )),
                ..CertificateSigningRequestCondition::default()
            });
        match api
            .replace_subresource("approval", &name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt == 0 => {
                csr = api.get(&name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The problem while a CSR waits for its signer.
fn waiting(name: &str, signer_name: &str) -> Problem {
    Problem::new(
        Reason::CSRPending,
        format!(
            "CertificateSigningRequest {name} is approved and waits for signer {signer_name} to issue it; if this lasts, check that the signer runs (kube-controller-manager signs kubernetes.io/kube-apiserver-client)"
        ),
    )
}
