//! The Kubeconfig reconciler.
//!
//! observe (the authority, the Secret, the bindings, from the watches' caches where possible)
//! -> decide ([`plan_secret`], [`plan_bindings`], [`status`]: pure functions of what was
//! observed) -> apply (server-side apply with one field manager, deletes) -> report (status,
//! events) and requeue at the renewal time.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        certificates::v1::CertificateSigningRequest,
        core::v1::Secret,
        rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::ObjectRef,
    },
};
use kubeconfig_authority_pki::{
    Identity, KeyAlgorithm, MIN_VALIDITY, format_duration,
    kubeconfig::{self as kc_file, Credential as FileCredential, KubeconfigSpec as FileSpec},
    parse_duration, renewal_time,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{Instrument, info, warn};

use super::{
    Context, Error, Result, Written,
    authority::{self, Problem, Resolved, ResolvedSigner},
    credential::{self, Held, Issued, IssuedCredential},
    distribution::{self, Distributed},
    managed::{self, ManagedSecret},
    policy, to_time,
};
use crate::api::{
    Authorization, CREDENTIAL_ANNOTATION, DATA_ANNOTATION, FIELD_MANAGER, FINALIZER,
    INPUTS_ANNOTATION, KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig, KubeconfigStatus,
    MANAGED_BY, MANAGED_BY_LABEL, UID_GROUP_PREFIX,
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// How long a Kubeconfig that waits for a person's fix is left alone before it is looked at
/// again anyway (its watches usually bring it back sooner).
const RETRY_PROBLEM: Duration = Duration::from_secs(300);

/// Whether a Kubeconfig makes anything the garbage collector cannot remove by ownerReference
/// (cluster-scoped or other-namespace bindings and copies, Roles): only then does it carry the
/// finalizer. Its Secret is owned by it, and the tokens bound to that Secret die with it.
pub fn needs_finalizer(kc: &Kubeconfig) -> bool {
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
                && (c.reason == credential::CSR_PENDING || c.reason == RENEWAL_BLOCKED)
        })
    });
    binds
        || spec.distribution.is_some()
        || copies
        || csr_pending
        || self_impersonating(kc).is_some()
}

/// Entry point. With a finalizer (see [`needs_finalizer`]) the finalizer helper adds it first
/// and runs [`cleanup`] on deletion; without one, a deleted object is left to the garbage
/// collector, and a plain issuance costs one write fewer.
pub async fn reconcile(kc: Arc<Kubeconfig>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api = Api::<Kubeconfig>::namespaced(ctx.client.clone(), &namespace);
    let span =
        tracing::info_span!("reconcile", kubeconfig = %format!("{namespace}/{}", kc.name_any()));
    let _timer = crate::metrics::ReconcileTimer::start(&ctx.metrics);
    let has_finalizer = kc.finalizers().iter().any(|f| f == FINALIZER);
    if !has_finalizer && !needs_finalizer(&kc) {
        if kc.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return apply(kc, &ctx).instrument(span).await;
    }
    let result = finalizer(&api, FINALIZER, kc, |event| async {
        match event {
            FinalizerEvent::Apply(kc) => {
                let action = apply(kc.clone(), &ctx).await?;
                if needs_finalizer(&kc) {
                    return Ok(action);
                }
                // Nothing outside the garbage collector's reach is left (this apply removed
                // it): the finalizer goes.
                let live = api
                    .get_opt(&kc.name_any())
                    .await
                    .map_err(Error::kube("reading the Kubeconfig"))?;
                if let Some(live) = live.filter(|l| !needs_finalizer(l) && l.uid() == kc.uid()) {
                    let rest: Vec<&String> =
                        live.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": live.resource_version()}});
                    api.patch(&live.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(Error::kube("removing the finalizer"))?;
                }
                Ok(action)
            }
            FinalizerEvent::Cleanup(kc) => cleanup(kc, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    super::finalizer_outcome(result)
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
}

/// The shortest token lifetime the TokenRequest API accepts.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

impl Desired {
    /// Reads the spec; a bad value is a [`Problem`] naming the field.
    pub fn from_spec(kc: &Kubeconfig, uid: &str, authority: &Resolved) -> Result<Self, Problem> {
        let spec = &kc.spec;
        let namespace = kc.namespace().unwrap_or_default();
        let invalid = |field: &str, e: &dyn std::fmt::Display| {
            Problem::new("InvalidSpec", format!("spec.{field}: {e}"))
        };
        let validity = parse_duration(&spec.validity).map_err(|e| invalid("validity", &e))?;
        let renew_before = spec
            .renew_before
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| invalid("renewBefore", &e))?;
        let mismatch = |message: &str| Problem::new("SignerMismatch", message.to_string());
        let (credential, user_name, signer) = match (
            &spec.username,
            &spec.service_account_ref,
            &authority.signer,
        ) {
            (Some(_), _, ResolvedSigner::Token { .. }) => {
                return Err(mismatch(
                    "spec.username asks for a certificate, but the authority's signer is serviceAccountToken: use spec.serviceAccountRef, or an authority that signs certificates",
                ));
            }
            (Some(username), _, signer) => {
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
                let signer = match signer {
                    ResolvedSigner::Ca(ca) => json!({"ca": ca.certificate_pem()}),
                    ResolvedSigner::Csr { signer_name } => json!({"csr": signer_name}),
                    ResolvedSigner::Token { .. } => json!(null),
                };
                let user = identity.username.clone();
                (
                    Credential::Certificate {
                        identity,
                        algorithm,
                    },
                    user,
                    signer,
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
                    json!({"token": audiences}),
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
            .unwrap_or_else(|| vec!["kubeconfig".into(), "value".into()]);
        let certificate_keys = spec.secret_ref.certificate_keys.unwrap_or(true)
            && matches!(credential, Credential::Certificate { .. });
        let inputs = json!({
            "credential": match &credential {
                Credential::Certificate { identity, algorithm } => json!({"identity": identity, "algorithm": algorithm.name()}),
                Credential::Token { service_account, .. } => json!({"serviceAccount": service_account}),
            },
            "validity": validity.as_secs(),
            "renewBefore": renew_before.map(|d| d.as_secs()),
            "kubeconfigKeys": kubeconfig_keys,
            "certificateKeys": certificate_keys,
            "server": authority.server,
            "serverCA": authority.server_ca_pem,
            "signer": signer,
        });
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
            inputs_digest: managed::digest(inputs.to_string().as_bytes()),
        })
    }
}

/// Why a new credential is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// There is no Secret yet.
    Issue,
    /// The credential is due for renewal (or expired).
    Renew,
    /// The Secret was edited or damaged.
    Repair,
    /// The spec, the authority or its CA changed.
    Reissue,
}

impl WriteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "Issued",
            Self::Renew => "Renewed",
            Self::Repair => "Repaired",
            Self::Reissue => "Reissued",
        }
    }
}

/// What to do with the Secret.
#[derive(Debug)]
pub enum SecretPlan {
    /// It holds a good credential, due for renewal at the given time.
    Keep {
        held: Held,
        renew_at: OffsetDateTime,
    },
    Write(WriteReason, String),
    /// A copy another Kubeconfig (named) distributed holds the name: deleted, then written.
    ReplaceCopy(String),
    /// A Secret of that name exists and is not ours: never overwritten.
    Conflict(Problem),
}

/// Decides what to do with the observed Secret. Pure.
pub fn plan_secret(
    desired: &Desired,
    uid: &str,
    observed: Option<&ManagedSecret>,
    now: OffsetDateTime,
) -> SecretPlan {
    let Some(secret) = observed else {
        return SecretPlan::Write(WriteReason::Issue, "no Secret yet".into());
    };
    let copy_of_another = secret.controller_uid.is_none()
        && secret
            .kubeconfig_uid
            .as_deref()
            .is_some_and(|other| other != uid);
    if copy_of_another {
        // A copy another Kubeconfig distributed here never takes a name a Kubeconfig of this
        // namespace refers to (`distribution`): it goes, and this one's Secret takes its place.
        return SecretPlan::ReplaceCopy(secret.kubeconfig.clone().unwrap_or_default());
    }
    if secret.controller_uid.as_deref() != Some(uid) {
        return SecretPlan::Conflict(Problem::new(
            "SecretConflict",
            format!(
                "Secret {} exists and is not managed by this Kubeconfig; it is left untouched: delete it or set another spec.secretRef.name",
                secret.name
            ),
        ));
    }
    if secret.inputs_digest.as_ref() != Some(&desired.inputs_digest) {
        return SecretPlan::Write(
            WriteReason::Reissue,
            "the spec, the authority or its CA changed".into(),
        );
    }
    if !secret.intact {
        return SecretPlan::Write(WriteReason::Repair, "the Secret's data was edited".into());
    }
    let held = secret
        .held
        .clone()
        .filter(|held| held.is_token == matches!(desired.credential, Credential::Token { .. }));
    let Some(held) = held else {
        return SecretPlan::Write(
            WriteReason::Repair,
            "the Secret holds no readable kubeconfig".into(),
        );
    };
    let renew_at = renewal_time(held.issued_at(), held.not_after, desired.renew_before, uid);
    if now >= renew_at || now >= held.not_after || now < held.not_before {
        return SecretPlan::Write(
            WriteReason::Renew,
            format!("the {} expires at {}", held.kind(), held.not_after),
        );
    }
    SecretPlan::Keep { held, renew_at }
}

/// The key of the Secret's first kubeconfig.
fn first_key(desired: &Desired) -> &str {
    desired
        .kubeconfig_keys
        .first()
        .map(String::as_str)
        .unwrap_or("kubeconfig")
}

/// The Secret holding a freshly issued credential. Pure.
pub fn build_secret(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    issued: &Issued,
    ca_pem: &str,
) -> Result<Secret, Problem> {
    let namespace = kc.namespace().unwrap_or_default();
    let context = format!("{}@{}", desired.user_name, namespace);
    let credential = match &issued.credential {
        IssuedCredential::Certificate {
            certificate_pem,
            private_key_pem,
        } => FileCredential::ClientCertificate {
            certificate_pem,
            private_key_pem,
        },
        IssuedCredential::Token(token) => FileCredential::Token(token),
    };
    let yaml = kc_file::render(&FileSpec {
        cluster_name: "cluster",
        user_name: &desired.user_name,
        context_name: &context,
        server: &desired.server,
        certificate_authority_pem: Some(&desired.server_ca_pem),
        namespace: None,
        credential,
    })
    .map_err(|e| Problem::new("InvalidAuthority", e.to_string()))?;
    let mut data = BTreeMap::new();
    for key in &desired.kubeconfig_keys {
        data.insert(key.clone(), ByteString(yaml.clone().into_bytes()));
    }
    if let (
        true,
        IssuedCredential::Certificate {
            certificate_pem,
            private_key_pem,
        },
    ) = (desired.certificate_keys, &issued.credential)
    {
        data.insert(
            "tls.crt".into(),
            ByteString(certificate_pem.clone().into_bytes()),
        );
        data.insert(
            "tls.key".into(),
            ByteString(private_key_pem.clone().into_bytes()),
        );
        data.insert("ca.crt".into(), ByteString(ca_pem.as_bytes().to_vec()));
    }
    let mut secret = secret_shell(kc, uid, &desired.secret_name);
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    let record = serde_json::to_string(&issued.held)
        .map_err(|e| Problem::new("InvalidAuthority", format!("recording the credential: {e}")))?;
    annotations.insert(INPUTS_ANNOTATION.into(), desired.inputs_digest.clone());
    annotations.insert(
        DATA_ANNOTATION.into(),
        managed::digest_of(&data, Some(&record)),
    );
    annotations.insert(CREDENTIAL_ANNOTATION.into(), record);
    secret.data = Some(data);
    Ok(secret)
}

/// The Secret's metadata (name, labels, owner) without data: what exists before a token bound
/// to it can be requested.
pub fn secret_shell(kc: &Kubeconfig, uid: &str, name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: kc.namespace(),
            labels: Some(owned_labels(uid)),
            annotations: Some(owner_annotation(kc)),
            owner_references: Some(vec![owner_reference(kc, uid)]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The bindings to create or update, and those to delete.
#[derive(Debug, Default, PartialEq)]
pub struct BindingPlan {
    pub apply_cluster: Vec<ClusterRoleBinding>,
    pub apply_namespaced: Vec<RoleBinding>,
    /// Roles the controller writes itself (self-impersonation of a ServiceAccount).
    pub apply_roles: Vec<Role>,
    pub delete_cluster: Vec<String>,
    pub delete_namespaced: Vec<(String, String)>,
    pub delete_roles: Vec<(String, String)>,
}

impl BindingPlan {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Compares the bindings the spec asks for (none when the policy does not `allow` them) with
/// those observed (carrying this object's UID label). Pure.
pub fn plan_bindings(
    kc: &Kubeconfig,
    uid: &str,
    allowed: bool,
    observed_cluster: &[Arc<ClusterRoleBinding>],
    observed_namespaced: &[Arc<RoleBinding>],
    observed_roles: &[Arc<Role>],
) -> BindingPlan {
    let (want_cluster, want_namespaced) = if allowed {
        desired_bindings(kc, uid)
    } else {
        Default::default()
    };
    let want_roles = if allowed {
        desired_roles(kc, uid)
    } else {
        Vec::new()
    };
    let (apply_roles, delete_roles) =
        plan_kind(want_roles, observed_roles, uid, |a, b| a.rules == b.rules);
    let (apply_cluster, delete_cluster) = plan_kind(want_cluster, observed_cluster, uid, |a, b| {
        a.role_ref == b.role_ref && a.subjects == b.subjects
    });
    let (apply_namespaced, delete_namespaced) =
        plan_kind(want_namespaced, observed_namespaced, uid, |a, b| {
            a.role_ref == b.role_ref && a.subjects == b.subjects
        });
    BindingPlan {
        apply_cluster,
        apply_namespaced,
        apply_roles,
        delete_cluster: delete_cluster.into_iter().map(|(_, name)| name).collect(),
        delete_namespaced,
        delete_roles,
    }
}

/// With `serviceAccountRef.impersonateSelf`: the Role allowing the ServiceAccount to
/// impersonate itself, in the Kubeconfig's namespace.
pub fn desired_roles(kc: &Kubeconfig, uid: &str) -> Vec<Role> {
    let Some(sa) = self_impersonating(kc) else {
        return Vec::new();
    };
    vec![Role {
        metadata: ObjectMeta {
            name: Some(self_impersonation_name(kc)),
            namespace: kc.namespace(),
            labels: Some(owned_labels(uid)),
            annotations: Some(owner_annotation(kc)),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["serviceaccounts".into()]),
            verbs: vec!["impersonate".into()],
            resource_names: Some(vec![sa.to_string()]),
            ..PolicyRule::default()
        }]),
    }]
}

fn self_impersonating(kc: &Kubeconfig) -> Option<&str> {
    kc.spec
        .service_account_ref
        .as_ref()
        .filter(|sa| sa.impersonate_self == Some(true))
        .map(|sa| sa.name.as_str())
}

fn self_impersonation_name(kc: &Kubeconfig) -> String {
    binding_name(&[
        &kc.namespace().unwrap_or_default(),
        &kc.name_any(),
        "impersonate-self",
    ])
}

/// For one kind of binding: those wanted that are missing or differ (`same` compares role and
/// subjects; labels are checked here), and the (namespace, name) of those observed but not
/// wanted.
fn plan_kind<B: Resource>(
    want: Vec<B>,
    observed: &[Arc<B>],
    uid: &str,
    same: impl Fn(&B, &B) -> bool,
) -> (Vec<B>, Vec<(String, String)>) {
    let key = |b: &B| {
        (
            b.meta().namespace.clone().unwrap_or_default(),
            b.meta().name.clone().unwrap_or_default(),
        )
    };
    let wanted: Vec<(String, String)> = want.iter().map(key).collect();
    let apply = want
        .into_iter()
        .filter(|w| {
            !observed.iter().any(|o| {
                key(o) == key(w) && same(o, w) && labels_match(o.meta().labels.as_ref(), uid)
            })
        })
        .collect();
    let delete = observed
        .iter()
        .map(|o| key(o))
        .filter(|k| !wanted.contains(k))
        .collect();
    (apply, delete)
}

fn cluster_roles(authorization: Option<&Authorization>) -> Vec<String> {
    let mut roles: Vec<String> = authorization
        .and_then(|a| a.cluster_role_bindings.as_ref())
        .map(|c| c.cluster_roles.clone())
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    roles
}

/// The ClusterRoleBindings and RoleBindings the spec asks for, all to the group
/// `kubeconfig-uid:<uid>`, which only certificates issued for this very object carry.
pub fn desired_bindings(kc: &Kubeconfig, uid: &str) -> (Vec<ClusterRoleBinding>, Vec<RoleBinding>) {
    let namespace = kc.namespace().unwrap_or_default();
    let name = kc.name_any();
    let subjects = Some(vec![Subject {
        kind: "Group".into(),
        api_group: Some(RBAC_GROUP.into()),
        name: format!("{UID_GROUP_PREFIX}{uid}"),
        namespace: None,
    }]);
    let meta = |binding_name: String, binding_namespace: Option<String>| ObjectMeta {
        name: Some(binding_name),
        namespace: binding_namespace,
        labels: Some(owned_labels(uid)),
        annotations: Some(owner_annotation(kc)),
        ..ObjectMeta::default()
    };
    let cluster = cluster_roles(kc.spec.authorization.as_ref())
        .into_iter()
        .map(|role| ClusterRoleBinding {
            metadata: meta(binding_name(&[&namespace, &name, &role]), None),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "ClusterRole".into(),
                name: role,
            },
            subjects: subjects.clone(),
        })
        .collect();
    let mut namespaced: Vec<RoleBinding> = Vec::new();
    for b in kc
        .spec
        .authorization
        .iter()
        .flat_map(|a| a.role_bindings.iter())
    {
        let (kind, role) = match (&b.cluster_role, &b.role) {
            (Some(cr), _) => ("ClusterRole", cr.clone()),
            (None, Some(r)) => ("Role", r.clone()),
            (None, None) => continue,
        };
        let binding = RoleBinding {
            metadata: meta(
                binding_name(&[&namespace, &name, &kind.to_ascii_lowercase(), &role]),
                Some(b.namespace.clone()),
            ),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: kind.into(),
                name: role,
            },
            subjects: subjects.clone(),
        };
        if !namespaced.iter().any(|o| {
            o.metadata.namespace == binding.metadata.namespace
                && o.metadata.name == binding.metadata.name
        }) {
            namespaced.push(binding);
        }
    }
    if let Some(sa) = self_impersonating(kc) {
        let role = self_impersonation_name(kc);
        namespaced.push(RoleBinding {
            metadata: meta(role.clone(), Some(namespace.clone())),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "Role".into(),
                name: role,
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                api_group: None,
                name: sa.to_string(),
                namespace: Some(namespace),
            }]),
        });
    }
    (cluster, namespaced)
}

/// `kubeconfig:<parts joined by ':'>`, cut to 253 characters with a digest suffix when longer.
fn binding_name(parts: &[&str]) -> String {
    let name = format!("kubeconfig:{}", parts.join(":"));
    if name.len() <= 253 {
        return name;
    }
    let suffix = &managed::digest(name.as_bytes())[..16];
    let mut cut = 253 - suffix.len() - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{suffix}", &name[..cut])
}

fn labels_match(labels: Option<&BTreeMap<String, String>>, uid: &str) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    get(MANAGED_BY_LABEL) == Some(MANAGED_BY) && get(KUBECONFIG_UID_LABEL) == Some(uid)
}

fn owned_labels(uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
        (KUBECONFIG_UID_LABEL.into(), uid.into()),
    ])
}

fn owner_annotation(kc: &Kubeconfig) -> BTreeMap<String, String> {
    BTreeMap::from([(
        KUBECONFIG_ANNOTATION.into(),
        format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any()),
    )])
}

fn owner_reference(kc: &Kubeconfig, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: Kubeconfig::api_version(&()).into_owned(),
        kind: Kubeconfig::kind(&()).into_owned(),
        name: kc.name_any(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

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

/// The Ready reason of a valid credential that cannot be renewed now.
pub const RENEWAL_BLOCKED: &str = "RenewalBlocked";

/// The status to write. Keeps a condition's lastTransitionTime while its status holds. Pure.
pub fn status(
    kc: &Kubeconfig,
    outcome: &Outcome,
    distributed: Option<&Distributed>,
    now: OffsetDateTime,
) -> KubeconfigStatus {
    let previous = kc.status.clone().unwrap_or_default();
    let condition = |type_: &str, ready: &str, reason: &str, message: String| {
        let transition = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == ready)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| to_time(now));
        Condition {
            type_: type_.into(),
            status: ready.into(),
            reason: reason.into(),
            message,
            observed_generation: kc.metadata.generation,
            last_transition_time: transition,
        }
    };
    let (ready, reason, message) = match outcome {
        Outcome::Ready {
            blocked: Some(_),
            message,
            ..
        } => ("True", RENEWAL_BLOCKED, message.clone()),
        Outcome::Ready {
            written: Some(w),
            message,
            ..
        } => ("True", w.as_str(), message.clone()),
        Outcome::Ready {
            written: None,
            held,
            message,
            ..
        } => ("True", kept_reason(kc, &held.id), message.clone()),
        Outcome::NotReady(p) => ("False", p.reason, p.message.clone()),
    };
    let mut conditions = vec![condition("Ready", ready, reason, message)];
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
                    (true, true) => ("True", "Distributed"),
                    (false, _) => ("False", "SecretConflict"),
                    (true, false) => ("False", "DistributionRefused"),
                };
                condition(DISTRIBUTED, status, reason, message)
            }
        });
    }
    let mut status = KubeconfigStatus {
        conditions,
        observed_generation: kc.metadata.generation,
        ..previous.clone()
    };
    if let Some(d) = distributed {
        status.distributed_copies = Some(d.copies).filter(|n| *n > 0);
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
        }
        // Nothing is held (see `withdraw`).
        Outcome::NotReady(_) => {
            status.renewal_time = None;
            status.secret_name = None;
            status.serial_number = None;
            status.token_id = None;
            status.not_before = None;
            status.not_after = None;
        }
    }
    status
}

/// The condition type about `spec.distribution`.
pub const DISTRIBUTED: &str = "Distributed";

async fn apply(kc: Arc<Kubeconfig>, ctx: &Context) -> Result<Action> {
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = kc.uid().ok_or(Error::MissingMetadata("uid"))?;
    let name = kc.name_any();
    ctx.caches_ready().await;
    let now = OffsetDateTime::now_utc();

    // The authority must exist and its policy allow the request before anything is bound or
    // issued.
    let namespace_labels = ctx
        .namespaces
        .get(&ObjectRef::new(&namespace))
        .map(|n| n.labels().clone());
    let found = authority::find(&kc, ctx)?.and_then(|found| {
        policy::check(
            found.config.policy.as_ref(),
            &kc.spec,
            &namespace,
            namespace_labels.as_ref(),
            &found.described,
        )
        .map(|()| found)
    });
    if let Ok(found) = &found {
        authority::report_ca_key(found, ctx).await?;
    }
    let copies_allowed = found
        .as_ref()
        .ok()
        .and_then(|f| f.config.policy.as_ref())
        .and_then(|p| p.distribution_namespace_selector.clone());
    let prepared = match found {
        Err(problem) => Err(problem),
        Ok(found) => authority::load(&found, &namespace, ctx)
            .await?
            .and_then(|resolved| Desired::from_spec(&kc, &uid, &resolved).map(|d| (resolved, d))),
    };
    let (outcome, data) = match &prepared {
        Err(problem) => (Outcome::NotReady(problem.clone()), None),
        Ok((resolved, desired)) => apply_secret(&kc, &uid, desired, resolved, ctx, now).await?,
    };
    // A Kubeconfig holds its credential and its bindings together or not at all. When the
    // authority cannot sign just now, a valid credential for the spec as it is stays (Ready,
    // `RenewalBlocked`) until it expires.
    let outcome = match outcome {
        Outcome::NotReady(problem) => match still_valid(&kc, &uid, problem, ctx, now) {
            Ok(kept) => {
                if let Some(problem) = apply_bindings(&kc, &uid, true, ctx).await? {
                    withdraw(&kc, &uid, ctx).await?;
                    Outcome::NotReady(problem)
                } else {
                    kept
                }
            }
            Err(problem) => {
                withdraw(&kc, &uid, ctx).await?;
                Outcome::NotReady(problem)
            }
        },
        ready => ready,
    };
    // Copies follow a Secret that holds a valid credential (read live when the cache, which
    // keeps no data, answered).
    let primary = match (&outcome, data) {
        (Outcome::Ready { .. }, Some(data)) => Some(data),
        (Outcome::Ready { .. }, None) if kc.spec.distribution.is_some() => {
            Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&kc.spec.secret_ref.name)
                .await
                .map_err(Error::kube("reading the Secret"))?
                .and_then(|s| s.data)
        }
        _ => None,
    };
    let subject = distribution::subject(&kc, &uid);
    let distributed = distribution::apply(
        &kc,
        &uid,
        primary.as_ref().zip(subject.as_ref()),
        copies_allowed.as_ref(),
        ctx,
    )
    .await?;
    let api = Api::<Kubeconfig>::namespaced(ctx.client.clone(), &namespace);
    let mut new_status = status(&kc, &outcome, distributed.as_ref(), now);
    // A first credential just written to an object with no status yet: nothing live can
    // already say so, and the status is written without reading the object first.
    let first_issue = kc.status.is_none()
        && matches!(
            outcome,
            Outcome::Ready {
                written: Some(_),
                ..
            }
        );
    if kc.status.as_ref() != Some(&new_status) {
        // The cached object may lag behind our last status write: compare with the live one.
        let live = if first_issue {
            None
        } else {
            api.get_opt(&name)
                .await
                .map_err(Error::kube("reading the Kubeconfig"))?
        };
        if let Some(live) = live {
            new_status = status(&live, &outcome, distributed.as_ref(), now);
            if live.status.as_ref() == Some(&new_status) {
                return Ok(requeue_for(&outcome, distributed.as_ref()));
            }
        }
        let patch = json!({"apiVersion": Kubeconfig::api_version(&()), "kind": Kubeconfig::kind(&()), "status": new_status});
        apply_status(&ctx.client, &namespace, &name, &patch)
            .await
            .map_err(Error::kube("updating status"))?;
    } else {
        return Ok(requeue_for(&outcome, distributed.as_ref()));
    }
    if let Outcome::NotReady(problem) = &outcome {
        // Reported once per change of the status (the patch above), not on every retry.
        warn!(reason = problem.reason, "{}", problem.message);
        crate::metrics::Metrics::count(&ctx.metrics.failures, problem.reason);
        publish(
            ctx,
            &kc,
            EventType::Warning,
            problem.reason,
            &problem.message,
            "Reconcile",
        )
        .await;
    }
    Ok(requeue_for(&outcome, distributed.as_ref()))
}

/// Applies a Kubeconfig's status. The API server is asked to answer with the metadata only:
/// nothing reads the answer, and the whole object would be decoded for nothing.
async fn apply_status(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: &Value,
) -> kube::Result<()> {
    let mut request = kube::core::Request::new(Kubeconfig::url_path(&(), Some(namespace)))
        .patch_subresource(
            "status",
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    client
        .request::<PartialObjectMeta<Kubeconfig>>(request)
        .await
        .map(drop)
}

/// The `Accept` header of an answer with the object's metadata only.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Ready: at the renewal time, and with copies at least every [`distribution::RECHECK`] (sooner
/// while a namespace is refused by an access review: rights often follow a new namespace by a
/// moment). Not ready: the watches bring the object back when something it depends on
/// changes; a slow retry covers anything they cannot see.
fn requeue_for(outcome: &Outcome, distributed: Option<&Distributed>) -> Action {
    match outcome {
        Outcome::Ready { renew_at, .. } => {
            let wait = (*renew_at - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO);
            let wait = match distributed {
                Some(d) if d.reviews_refused => wait.min(distribution::RECHECK_REFUSED),
                Some(_) => wait.min(distribution::RECHECK),
                None => wait,
            };
            Action::requeue(wait.max(Duration::from_millis(100)))
        }
        Outcome::NotReady(p) if p.reason == credential::CSR_PENDING => {
            Action::requeue(credential::CSR_RETRY)
        }
        Outcome::NotReady(_) => Action::requeue(RETRY_PROBLEM),
    }
}

async fn apply_secret(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    resolved: &Resolved,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<(Outcome, Option<SecretData>)> {
    let namespace = kc.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    // The cache answers most reconciles. It can lag behind our own last write, so a plan to
    // write is checked against the live object first: nothing is issued twice.
    let cached = ctx
        .secrets
        .get(&ObjectRef::new(&desired.secret_name).within(&namespace));
    let cached_plan = cached.map(|c| plan_secret(desired, uid, Some(&c), now));
    let (plan, data) = match cached_plan {
        Some(plan) if !matches!(plan, SecretPlan::Write(..) | SecretPlan::ReplaceCopy(_)) => {
            (plan, None)
        }
        // Not cached (perhaps not ours), or the cache says write: ask the live object, once.
        _ => {
            let live = secrets
                .get_opt(&desired.secret_name)
                .await
                .map_err(Error::kube(format!(
                    "reading Secret {}",
                    desired.secret_name
                )))?;
            let observed = live
                .as_ref()
                .map(|l| ManagedSecret::of(l, Some(first_key(desired))));
            let plan = plan_secret(desired, uid, observed.as_ref(), now);
            (plan, live.and_then(|l| l.data))
        }
    };
    let ready_message = format!("Secret {} holds a valid kubeconfig", desired.secret_name);
    let (reason, why) = match plan {
        SecretPlan::Keep { held, renew_at } => {
            if let Some(problem) = apply_bindings(kc, uid, true, ctx).await? {
                return Ok((Outcome::NotReady(problem), None));
            }
            let outcome = Outcome::Ready {
                held,
                renew_at,
                written: None,
                message: ready_message,
                blocked: None,
            };
            return Ok((outcome, data));
        }
        SecretPlan::Conflict(problem) => return Ok((Outcome::NotReady(problem), None)),
        SecretPlan::Write(reason, why) => (reason, why),
        SecretPlan::ReplaceCopy(owner) => {
            // Deleted first: the deletion brings the distributing Kubeconfig back, which then
            // sees the name claimed here.
            delete_ignoring_absent(secrets.clone(), &desired.secret_name).await?;
            (
                WriteReason::Issue,
                format!("the copy Kubeconfig {owner} had distributed under that name was removed"),
            )
        }
    };
    ctx.spend(uid, Written::Secret)?;
    let mut issued = match credential::issue(kc, uid, desired, &resolved.signer, ctx, now).await? {
        Ok(issued) => issued,
        Err(problem) => return Ok((Outcome::NotReady(problem), None)),
    };
    // A token or a CSR's certificate counts from now; a CA's from `now` as passed to it.
    issued
        .held
        .issued_at
        .get_or_insert_with(OffsetDateTime::now_utc);
    let ca_pem = match &resolved.signer {
        ResolvedSigner::Ca(ca) => ca.certificate_pem(),
        _ => desired.server_ca_pem.as_str(),
    };
    let secret = match build_secret(kc, uid, desired, &issued, ca_pem) {
        Ok(secret) => secret,
        Err(problem) => return Ok((Outcome::NotReady(problem), None)),
    };
    // The bindings are in place before the credential is written; if they cannot be, the
    // credential is never written.
    if let Some(problem) = apply_bindings(kc, uid, true, ctx).await? {
        return Ok((Outcome::NotReady(problem), None));
    }
    ctx.write_managed_secret(&namespace, &secret)
        .await
        .map_err(Error::kube(format!(
            "writing Secret {}",
            desired.secret_name
        )))?;
    let held = issued.held;
    let what = match &desired.credential {
        Credential::Certificate { .. } => format!(
            "a certificate for {} (serial {})",
            desired.user_name, held.id
        ),
        Credential::Token { .. } => format!("a token for {}", desired.user_name),
    };
    let message = format!(
        "{} {what}, valid until {}, into Secret {}: {why}",
        reason.as_str(),
        held.not_after,
        desired.secret_name
    );
    info!(reason = reason.as_str(), id = %held.id, "{message}");
    crate::metrics::Metrics::count(&ctx.metrics.issued, reason.as_str());
    publish(
        ctx,
        kc,
        EventType::Normal,
        reason.as_str(),
        &message,
        "Issue",
    )
    .await;
    let renew_at = renewal_time(held.issued_at(), held.not_after, desired.renew_before, uid);
    let outcome = Outcome::Ready {
        held,
        renew_at,
        written: Some(reason),
        message: match issued.note {
            Some(note) => format!("{ready_message}; {note}"),
            None => ready_message,
        },
        blocked: None,
    };
    Ok((outcome, secret.data))
}

/// A Secret's data.
type SecretData = BTreeMap<String, ByteString>;

/// How often a credential that cannot be renewed is tried again (the watches of the CA and
/// the authority usually bring it back sooner).
const RETRY_BLOCKED: Duration = Duration::from_secs(60);

/// When `problem` only stops the authority from signing now, the credential the Secret holds
/// stays Ready while it is valid, intact and was issued for the spec as it is (the last status
/// was Ready for this generation). Otherwise the problem stands.
fn still_valid(
    kc: &Kubeconfig,
    uid: &str,
    problem: Problem,
    ctx: &Context,
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
                .any(|c| c.type_ == "Ready" && c.status == "True")
    });
    let namespace = kc.namespace().unwrap_or_default();
    let held = ctx
        .secrets
        .get(&ObjectRef::new(&kc.spec.secret_ref.name).within(&namespace))
        .filter(|s| was_ready && s.controller_uid.as_deref() == Some(uid) && s.intact)
        .and_then(|s| s.held.clone())
        .filter(|held| now >= held.not_before && now < held.not_after);
    let Some(held) = held else {
        return Err(problem);
    };
    let retry = if problem.reason == credential::CSR_PENDING {
        credential::CSR_RETRY
    } else {
        RETRY_BLOCKED
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

/// Removes what a Kubeconfig that is not Ready must not hold: its bindings and its own Secret
/// (copies go with distribution). A Secret it does not own is left alone.
async fn withdraw(kc: &Kubeconfig, uid: &str, ctx: &Context) -> Result<()> {
    apply_bindings(kc, uid, false, ctx).await?;
    let namespace = kc.namespace().unwrap_or_default();
    let name = &kc.spec.secret_ref.name;
    let ours = ctx
        .secrets
        .get(&ObjectRef::new(name).within(&namespace))
        .is_some_and(|s| s.controller_uid.as_deref() == Some(uid));
    if ours {
        info!(secret = %name, "removing the Secret of a Kubeconfig that is not Ready");
        delete_ignoring_absent(
            Api::<Secret>::namespaced(ctx.client.clone(), &namespace),
            name,
        )
        .await?;
    }
    Ok(())
}

/// The Ready reason of a credential that is kept: what was last done to it, as the current
/// status says (when it is about the same credential), else `Issued`.
fn kept_reason(kc: &Kubeconfig, id: &str) -> &'static str {
    let status = kc.status.as_ref();
    let same_certificate =
        status.is_some_and(|s| s.serial_number.as_deref().or(s.token_id.as_deref()) == Some(id));
    let previous = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
    });
    match previous.map(|c| c.reason.as_str()) {
        Some("Renewed") if same_certificate => "Renewed",
        Some("Repaired") if same_certificate => "Repaired",
        Some("Reissued") if same_certificate => "Reissued",
        _ => "Issued",
    }
}

/// Brings the bindings in line with the spec (or removes them all when `allowed` is false). A
/// refusal by the API server (for example the controller may not bind that role) is a problem
/// to report, not a crash.
async fn apply_bindings(
    kc: &Kubeconfig,
    uid: &str,
    allowed: bool,
    ctx: &Context,
) -> Result<Option<Problem>> {
    let mine = |labels: &BTreeMap<String, String>| {
        labels.get(KUBECONFIG_UID_LABEL).map(String::as_str) == Some(uid)
    };
    let observed_cluster: Vec<_> = ctx
        .cluster_role_bindings
        .state()
        .into_iter()
        .filter(|b| mine(b.labels()))
        .collect();
    let observed_namespaced: Vec<_> = ctx
        .role_bindings
        .state()
        .into_iter()
        .filter(|b| mine(b.labels()))
        .collect();
    let observed_roles: Vec<_> = ctx
        .roles
        .state()
        .into_iter()
        .filter(|b| mine(b.labels()))
        .collect();
    let plan = plan_bindings(
        kc,
        uid,
        allowed,
        &observed_cluster,
        &observed_namespaced,
        &observed_roles,
    );
    if plan.is_empty() {
        return Ok(None);
    }
    ctx.spend(uid, Written::Bindings)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut failures = Vec::new();
    // Roles before the bindings that refer to them.
    for r in &plan.apply_roles {
        let (ns, name) = (r.namespace().unwrap_or_default(), r.name_any());
        if let Err(e) = Api::<Role>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(r))
            .await
        {
            failures.push(binding_failure(&format!("Role {ns}/{name}"), e)?);
        }
    }
    for b in &plan.apply_cluster {
        let name = b.name_any();
        if let Err(e) = Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .patch(&name, &params, &Patch::Apply(b))
            .await
        {
            failures.push(binding_failure(&format!("ClusterRoleBinding {name}"), e)?);
        }
    }
    for b in &plan.apply_namespaced {
        let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
        if let Err(e) = Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(b))
            .await
        {
            failures.push(binding_failure(&format!("RoleBinding {ns}/{name}"), e)?);
        }
    }
    for name in &plan.delete_cluster {
        delete_ignoring_absent(Api::<ClusterRoleBinding>::all(ctx.client.clone()), name).await?;
    }
    for (ns, name) in &plan.delete_namespaced {
        delete_ignoring_absent(Api::<RoleBinding>::namespaced(ctx.client.clone(), ns), name)
            .await?;
    }
    for (ns, name) in &plan.delete_roles {
        delete_ignoring_absent(Api::<Role>::namespaced(ctx.client.clone(), ns), name).await?;
    }
    Ok((!failures.is_empty()).then(|| Problem::new("RBACFailed", failures.join("; "))))
}

/// A binding the API server refused (4xx other than conflicts) is a problem for a person;
/// anything else is an error to retry.
fn binding_failure(what: &str, e: kube::Error) -> Result<String> {
    match &e {
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && status.code != 409 && status.code != 429 =>
        {
            Ok(format!("{what} was refused: {}", status.message))
        }
        _ => Err(Error::Kube {
            action: format!("writing {what}"),
            source: e,
        }),
    }
}

pub(super) async fn delete_ignoring_absent<K>(api: Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            action: format!("deleting {name}"),
            source: e,
        }),
    }
}

/// Deletes every object of a kind that carries the selector's label (from a list of the API
/// server, not a cache, so that nothing is missed), but those in a namespace `keep` names.
async fn delete_labelled<K>(
    client: &kube::Client,
    selector: &ListParams,
    api_for: impl Fn(Option<String>) -> Api<K>,
    keep: impl Fn(&str) -> bool,
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let plural = K::plural(&K::DynamicType::default()).into_owned();
    let listed = Api::<kube::core::PartialObjectMeta<K>>::all_with(
        client.clone(),
        &K::DynamicType::default(),
    )
    .list(selector)
    .await
    .map_err(Error::kube(format!("listing {plural}")))?;
    for object in listed {
        let namespace = object.namespace();
        if namespace.as_deref().is_some_and(&keep) {
            continue;
        }
        delete_ignoring_absent(api_for(namespace), &object.name_any()).await?;
    }
    Ok(())
}

/// Runs before the object goes: every binding, Role, CSR and copy carrying its UID, then its
/// Secret (if it is ours).
async fn cleanup(kc: Arc<Kubeconfig>, ctx: &Context) -> Result<Action> {
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = kc.uid().ok_or(Error::MissingMetadata("uid"))?;
    let selector = ListParams::default().labels(&format!("{KUBECONFIG_UID_LABEL}={uid}"));
    let client = &ctx.client;
    let none = |_: &str| false;
    let within = |ns: Option<String>| ns.unwrap_or_default();
    delete_labelled(
        client,
        &selector,
        |_| Api::<ClusterRoleBinding>::all(client.clone()),
        none,
    )
    .await?;
    delete_labelled(
        client,
        &selector,
        |ns| Api::<RoleBinding>::namespaced(client.clone(), &within(ns)),
        none,
    )
    .await?;
    delete_labelled(
        client,
        &selector,
        |ns| Api::<Role>::namespaced(client.clone(), &within(ns)),
        none,
    )
    .await?;
    // CSRs still waiting (a signed one is deleted when its certificate is taken).
    if let Ok(mut pending) = ctx.pending_csrs.lock() {
        pending.remove(&uid);
    }
    delete_labelled(
        client,
        &selector,
        |_| Api::<CertificateSigningRequest>::all(client.clone()),
        none,
    )
    .await?;
    // Copies in other namespaces (spec.distribution); the Secret itself is checked below.
    delete_labelled(
        client,
        &selector,
        |ns| Api::<Secret>::namespaced(client.clone(), &within(ns)),
        |ns| ns == namespace,
    )
    .await?;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let secret_name = &kc.spec.secret_ref.name;
    let secret = secrets
        .get_metadata_opt(secret_name)
        .await
        .map_err(Error::kube("reading the Secret"))?;
    if secret.is_some_and(|s| s.owner_references().iter().any(|o| o.uid == uid)) {
        delete_ignoring_absent(secrets, secret_name).await?;
    }
    info!("removed the bindings and the Secret");
    Ok(Action::await_change())
}

async fn publish(
    ctx: &Context,
    kc: &Kubeconfig,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &kc.object_ref(&())).await {
        warn!("could not publish an event: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeconfig_authority_pki::CertificateAuthority;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    const UID: &str = "0b7e1c5e-0000-4000-8000-000000000001";

    fn make_ca(name: &str) -> Arc<CertificateAuthority> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(30 * 86400);
        let cert = params.self_signed(&key).unwrap();
        Arc::new(CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem(), now).unwrap())
    }

    fn kubeconfig(spec: serde_json::Value) -> Kubeconfig {
        serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": "susan", "namespace": "team-a", "uid": UID, "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn base_spec() -> serde_json::Value {
        json!({"username": "susan", "groups": ["dev"], "validity": "24h", "secretRef": {"name": "susan-kubeconfig"}})
    }

    fn resolved(ca: &Arc<CertificateAuthority>) -> Resolved {
        Resolved {
            server: "https://api.example:6443".into(),
            server_ca_pem: ca.certificate_pem().into(),
            signer: ResolvedSigner::Ca(ca.clone()),
        }
    }

    /// Issues and builds the Secret the controller would write.
    fn written(
        kc: &Kubeconfig,
        desired: &Desired,
        ca: &CertificateAuthority,
        now: OffsetDateTime,
    ) -> Secret {
        let Credential::Certificate {
            identity,
            algorithm,
        } = &desired.credential
        else {
            panic!("a certificate")
        };
        let issued = ca
            .issue(identity, *algorithm, desired.validity, now)
            .unwrap();
        let issued = Issued {
            held: Held {
                id: issued.serial,
                not_before: issued.not_before,
                not_after: issued.not_after,
                is_token: false,
                issued_at: Some(now),
            },
            note: None,
            credential: IssuedCredential::Certificate {
                certificate_pem: issued.certificate_pem,
                private_key_pem: issued.private_key_pem,
            },
        };
        build_secret(kc, UID, desired, &issued, ca.certificate_pem()).unwrap()
    }

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

    #[test]
    fn bad_spec_values_name_the_field() {
        let ca = make_ca("a");
        let mut spec = base_spec();
        spec["validity"] = json!("7d");
        let problem = Desired::from_spec(&kubeconfig(spec), UID, &resolved(&ca)).unwrap_err();
        assert_eq!(problem.reason, "InvalidSpec");
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
    fn the_secret_plan_follows_what_was_observed() {
        let ca = make_ca("a");
        let kc = kubeconfig(base_spec());
        let desired = Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap();
        let now = OffsetDateTime::now_utc();
        let plan = |desired: &Desired, uid: &str, secret: &Secret, at: OffsetDateTime| {
            plan_secret(
                desired,
                uid,
                Some(&ManagedSecret::of(secret, Some("kubeconfig"))),
                at,
            )
        };
        assert!(matches!(
            plan_secret(&desired, UID, None, now),
            SecretPlan::Write(WriteReason::Issue, _)
        ));

        let secret = written(&kc, &desired, &ca, now);
        let SecretPlan::Keep { renew_at, held } = plan(&desired, UID, &secret, now) else {
            panic!("a fresh Secret is kept")
        };
        assert!(!held.is_token && held.not_after > now + Duration::from_secs(23 * 3600));
        assert!(
            renew_at > now + Duration::from_secs(15 * 3600)
                && renew_at <= now + Duration::from_secs(16 * 3600 + 300)
        );
        // The cache keeps no data, and plans the same.
        let cached = ManagedSecret::from(secret.clone());
        assert!(cached.intact && cached.held.as_ref() == Some(&held));
        assert!(matches!(
            plan_secret(&desired, UID, Some(&cached), renew_at),
            SecretPlan::Write(WriteReason::Renew, _)
        ));

        // Due: renew.
        assert!(matches!(
            plan(&desired, UID, &secret, renew_at),
            SecretPlan::Write(WriteReason::Renew, _)
        ));
        // Edited data: repair.
        let mut edited = secret.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(b"x".to_vec()));
        assert!(matches!(
            plan(&desired, UID, &edited, now),
            SecretPlan::Write(WriteReason::Repair, _)
        ));
        // An edited credential record (say, a later expiry): repair, as for the data.
        let mut extended = secret.clone();
        let record = extended
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .get_mut(CREDENTIAL_ANNOTATION)
            .unwrap();
        *record = record.replace(&held.not_after.year().to_string(), "2999");
        assert!(matches!(
            plan(&desired, UID, &extended, now),
            SecretPlan::Write(WriteReason::Repair, _)
        ));
        // Written before there was a record: the credential is read from the data; the cache
        // (no data) asks for the live Secret.
        let mut unrecorded = secret.clone();
        let annotations = unrecorded.metadata.annotations.as_mut().unwrap();
        annotations.remove(CREDENTIAL_ANNOTATION);
        let digest = managed::digest_of(unrecorded.data.as_ref().unwrap(), None);
        unrecorded
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DATA_ANNOTATION.into(), digest);
        let SecretPlan::Keep { held: read, .. } = plan(&desired, UID, &unrecorded, now) else {
            panic!("an unrecorded Secret is kept")
        };
        // The certificate says nothing of when it was received.
        assert_eq!(
            read,
            Held {
                issued_at: None,
                ..held.clone()
            }
        );
        assert!(matches!(
            plan_secret(&desired, UID, Some(&ManagedSecret::from(unrecorded)), now),
            SecretPlan::Write(WriteReason::Repair, _)
        ));
        // Another CA, or another spec: reissue.
        let other = Desired::from_spec(&kc, UID, &resolved(&make_ca("b"))).unwrap();
        assert!(matches!(
            plan(&other, UID, &secret, now),
            SecretPlan::Write(WriteReason::Reissue, _)
        ));
        let mut spec = base_spec();
        spec["groups"] = json!(["dev", "ops"]);
        let regrouped = Desired::from_spec(&kubeconfig(spec), UID, &resolved(&ca)).unwrap();
        assert!(matches!(
            plan(&regrouped, UID, &secret, now),
            SecretPlan::Write(WriteReason::Reissue, _)
        ));
        // Someone else's Secret, or one of an older object of the same name: never touched.
        let mut foreign = secret.clone();
        foreign.metadata.owner_references = None;
        assert!(matches!(
            plan(&desired, UID, &foreign, now),
            SecretPlan::Conflict(_)
        ));
        assert!(matches!(
            plan(&desired, "another-uid", &secret, now),
            SecretPlan::Conflict(_)
        ));
    }

    #[test]
    fn the_secret_holds_an_inline_kubeconfig_under_each_key() {
        let ca = make_ca("a");
        let mut spec = base_spec();
        spec["secretRef"] =
            json!({"name": "s", "kubeconfigKeys": ["config"], "certificateKeys": false});
        let kc = kubeconfig(spec);
        let desired = Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap();
        let secret = written(&kc, &desired, &ca, OffsetDateTime::now_utc());
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["config"]);
        let parsed = kc_file::parse(std::str::from_utf8(&data["config"].0).unwrap()).unwrap();
        assert_eq!(parsed.server, "https://api.example:6443");
        assert!(parsed.client_key_pem.is_some() && parsed.certificate_authority_pem.is_some());
        assert_eq!(secret.labels()[KUBECONFIG_UID_LABEL], UID);
        assert_eq!(secret.owner_references()[0].uid, UID);
    }

    #[test]
    fn bindings_are_planned_against_what_exists() {
        let kc = kubeconfig(json!({
            "username": "susan", "validity": "1h", "secretRef": {"name": "s"},
            "authorization": {
                "clusterRoleBindings": {"clusterRoles": ["view", "view"]},
                "roleBindings": [{"namespace": "team-a", "clusterRole": "edit"}, {"namespace": "team-b", "role": "deployer"}],
            },
        }));
        let plan = plan_bindings(&kc, UID, true, &[], &[], &[]);
        assert_eq!(plan.apply_cluster.len(), 1, "duplicates collapse");
        assert_eq!(
            plan.apply_cluster[0].name_any(),
            "kubeconfig:team-a:susan:view"
        );
        let names: Vec<_> = plan
            .apply_namespaced
            .iter()
            .map(|b| {
                (
                    b.namespace().unwrap(),
                    b.name_any(),
                    b.role_ref.kind.clone(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (
                    "team-a".to_string(),
                    "kubeconfig:team-a:susan:clusterrole:edit".to_string(),
                    "ClusterRole".to_string()
                ),
                (
                    "team-b".to_string(),
                    "kubeconfig:team-a:susan:role:deployer".to_string(),
                    "Role".to_string()
                ),
            ]
        );
        // Everything in place: nothing to do.
        let (cluster, namespaced) = desired_bindings(&kc, UID);
        let cluster: Vec<_> = cluster.into_iter().map(Arc::new).collect();
        let mut namespaced: Vec<_> = namespaced.into_iter().map(Arc::new).collect();
        assert!(plan_bindings(&kc, UID, true, &cluster, &namespaced, &[]).is_empty());
        // Refused by the policy: every binding goes.
        let refused = plan_bindings(&kc, UID, false, &cluster, &namespaced, &[]);
        assert_eq!(
            (
                refused.delete_cluster.len(),
                refused.delete_namespaced.len()
            ),
            (1, 2)
        );
        assert!(refused.apply_cluster.is_empty() && refused.apply_namespaced.is_empty());
        // An edited binding is re-applied; one no longer asked for is deleted.
        let mut edited = (*namespaced[0]).clone();
        edited.subjects = None;
        namespaced[0] = Arc::new(edited);
        let mut stale = (*namespaced[1]).clone();
        stale.metadata.name = Some("kubeconfig:team-a:susan:role:old".into());
        namespaced.push(Arc::new(stale));
        let plan = plan_bindings(&kc, UID, true, &cluster, &namespaced, &[]);
        assert_eq!(plan.apply_namespaced.len(), 1);
        assert_eq!(
            plan.delete_namespaced,
            [(
                "team-b".to_string(),
                "kubeconfig:team-a:susan:role:old".to_string()
            )]
        );
        assert!(binding_name(&["a".repeat(300).as_str()]).len() <= 253);
    }

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
        let first = status(&kc, &ready, None, t0);
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
            status(&kc, &kept, None, t0 + Duration::from_secs(60)),
            first,
            "nothing changed, nothing to write"
        );
        let problem = Outcome::NotReady(Problem::new(
            "CASecretNotFound",
            "the CA Secret x/y does not exist",
        ));
        let failed = status(&kc, &problem, None, t0 + Duration::from_secs(60));
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
            blocked: Some(Problem::new("CASecretNotFound", "gone")),
        };
        let kept = status(&kc, &blocked, None, t0 + Duration::from_secs(60));
        assert_eq!(
            (
                kept.conditions[0].status.as_str(),
                kept.conditions[0].reason.as_str()
            ),
            ("True", RENEWAL_BLOCKED)
        );
        assert_eq!(kept.renewal_time, first.renewal_time);
        assert_eq!(kept.serial_number, first.serial_number);
    }
}
