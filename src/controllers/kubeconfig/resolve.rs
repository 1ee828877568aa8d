//! Resolving a Kubeconfig's authority: the server, the CA bundle that verifies it, and the CA
//! that signs. Every way this can fail is a [`Problem`] a person can act on.

use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::{ConfigMap, ObjectReference, Secret},
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{events::EventType, reflector::ObjectRef},
};
use kubeconfig_authority_pki::{CertificateAuthority, kubeconfig as kc_file, parse_certificates};
use serde_json::json;
use time::OffsetDateTime;

use super::{Context, policy, request::Desired};
use crate::{
    api::{
        ArgoCdPolicy, Authority, AuthorityConfig, AuthorityKind, AuthorityStatus, ClusterAuthority,
        FIELD_MANAGER, Kubeconfig,
    },
    model::{
        Error, Problem, Reason, Result,
        authority::{
            ROOT_CA_CONFIG_MAP, Resolved, ResolvedSigner, TARGET_KEY, authority_ref, target_of,
        },
    },
};

/// An authority found in the caches: its settings, the namespace it may read from (an
/// Authority's own; none for a ClusterAuthority), and how to name it in messages.
pub struct Found {
    pub config: AuthorityConfig,
    pub own_namespace: Option<String>,
    pub described: String,
    /// The object, to report on.
    pub kind: AuthorityKind,
    pub name: String,
    pub status: AuthorityStatus,
}

/// What a Kubeconfig needs before anything is written: its authority found, its policy
/// satisfied, the authority's CA and bundle loaded, and the spec read once; or the problem that
/// stops it. Also where the authority lets the Secret's data go. An authority whose CA key
/// sits with requesters is flagged on the way.
pub async fn prepare(
    kc: &Kubeconfig,
    uid: &str,
    ctx: &Context,
) -> Result<(Result<(Resolved, Desired), Problem>, Outputs)> {
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let namespace_labels = ctx
        .namespaces
        .get(&ObjectRef::new(&namespace))
        .map(|n| n.labels().clone());
    let found = find(kc, ctx)?.and_then(|found| {
        policy::check(
            found.config.policy.as_ref(),
            &kc.spec,
            &namespace,
            namespace_labels.as_ref(),
            &found.described,
            found.config.target.is_some(),
        )
        .map(|()| found)
    });
    let found = match found {
        Ok(found) => found,
        Err(problem) => return Ok((Err(problem), Outputs::default())),
    };
    report_ca_key(&found, kc, ctx).await?;
    let policy = found.config.policy.as_ref();
    let allowed = Outputs {
        copies: policy.and_then(|p| p.distribution_namespace_selector.clone()),
        argo_cd: policy.and_then(|p| p.argo_cd.clone()),
    };
    let prepared = load(&found, &namespace, ctx)
        .await?
        .and_then(|resolved| Desired::from_spec(kc, uid, &resolved).map(|d| (resolved, d)));
    Ok((prepared, allowed))
}

/// Where an authority lets the Secret's data go (its policy).
#[derive(Debug, Default)]
pub struct Outputs {
    /// `policy.distributionNamespaceSelector`.
    pub copies: Option<LabelSelector>,
    /// `policy.argoCD`.
    pub argo_cd: Option<ArgoCdPolicy>,
}

/// Finds the authority of `kc` in the caches. A missing one is a [`Problem`].
pub fn find(kc: &Kubeconfig, ctx: &Context) -> Result<Result<Found, Problem>> {
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let Some(aref) = authority_ref(kc, ctx.default_authority.as_ref()) else {
        return Ok(Err(Problem::new(
            Reason::NoAuthority,
            "spec.authorityRef is not set and the controller has no default authority; set spec.authorityRef",
        )));
    };
    Ok(match aref.kind {
        AuthorityKind::Authority => {
            let described = format!("Authority {namespace}/{}", aref.name);
            ctx.authorities
                .get(&ObjectRef::<Authority>::new(&aref.name).within(&namespace))
                .map(|a| Found {
                    config: a.spec.config.clone(),
                    own_namespace: Some(namespace.clone()),
                    described: described.clone(),
                    kind: AuthorityKind::Authority,
                    name: aref.name.clone(),
                    status: a.status.clone().unwrap_or_default(),
                })
                .ok_or_else(|| Problem::new(Reason::AuthorityNotFound,
                    format!("{described} does not exist; an Authority serves only the Kubeconfigs of its own namespace: create it here, or use a ClusterAuthority that admits this namespace"),
                ))
        }
        AuthorityKind::ClusterAuthority => {
            let described = format!("ClusterAuthority {}", aref.name);
            ctx.cluster_authorities
                .get(&ObjectRef::<ClusterAuthority>::new(&aref.name))
                .map(|a| Found {
                    config: a.spec.config.clone(),
                    own_namespace: None,
                    described: described.clone(),
                    kind: AuthorityKind::ClusterAuthority,
                    name: aref.name.clone(),
                    status: a.status.clone().unwrap_or_default(),
                })
                .ok_or_else(|| {
                    Problem::new(
                        Reason::AuthorityNotFound,
                        format!("{described} does not exist; create it or fix spec.authorityRef"),
                    )
                })
        }
    })
}

/// The condition type on an authority about where its CA key is kept.
pub const CA_KEY_ISOLATED: &str = "CAKeyIsolated";

/// The CA Secret (namespace, name) of an authority that signs with a CA key, when it sits in
/// a namespace where Kubeconfigs are requested (`requested_in`): whoever can read Secrets
/// there (a team member, any kubeconfig bound to `edit` there) can sign any identity,
/// `system:masters` included. Pure.
pub fn exposed_ca_key(
    config: &AuthorityConfig,
    own_namespace: Option<&str>,
    requested_in: impl Fn(&str) -> bool,
) -> Option<(String, String)> {
    let r = config.signer.ca_secret_ref.as_ref()?;
    let namespace = r.namespace.as_deref().or(own_namespace)?;
    requested_in(namespace).then(|| (namespace.to_string(), r.name.clone()))
}

/// The `CAKeyIsolated` condition an authority should carry, when it differs from the one it
/// has (`None`: nothing to write; an authority never flagged is not written to). Pure.
pub fn ca_key_condition(
    found: &Found,
    exposed: Option<&(String, String)>,
    now: time::OffsetDateTime,
) -> Option<Condition> {
    let current = found
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CA_KEY_ISOLATED);
    let (status, reason, message) = match exposed {
        Some((ns, name)) => (
            "False",
            Reason::CAKeyWithRequesters,
            format!(
                "the CA key in Secret {ns}/{name} sits in a namespace where Kubeconfigs are requested: whoever can read Secrets there can sign any identity, system:masters included. Keep CA keys in the controller's namespace and issue through a ClusterAuthority (README, Security)"
            ),
        ),
        None if current.is_some() => (
            "True",
            Reason::CAKeyApart,
            "no Kubeconfig is requested in the namespace of the CA key's Secret".to_string(),
        ),
        None => return None,
    };
    if current.is_some_and(|c| c.status == status && c.message == message) {
        return None;
    }
    Some(crate::model::condition(
        &found.status.conditions,
        CA_KEY_ISOLATED,
        status,
        reason,
        message,
        None,
        now,
    ))
}

/// Whether this process has not written `condition` to the authority yet (`None`: the cache
/// shows what was written, and nothing needs remembering).
fn first_write(ctx: &Context, described: &str, condition: Option<&Condition>) -> bool {
    let prefix = format!("{described}/");
    let Ok(mut flagged) = ctx.flagged.lock() else {
        return true;
    };
    flagged.retain(|k| !k.starts_with(&prefix) || condition.is_some());
    let Some(condition) = condition else {
        return false;
    };
    let key = format!("{prefix}{}", condition.status);
    if !flagged.insert(key.clone()) {
        return false;
    }
    flagged.retain(|k| !k.starts_with(&prefix) || *k == key);
    true
}

/// Flags an authority whose CA key sits where Kubeconfigs are requested: a condition, and a
/// Warning event when it is first found. Written once per change (`flagged` remembers what
/// this process wrote until the cache shows it).
pub async fn report_ca_key(found: &Found, kc: &Kubeconfig, ctx: &Context) -> Result<()> {
    // This reconcile runs for every Kubeconfig: the one at hand answers for its own namespace
    // (always, for an Authority), and the cache is searched in place, never copied.
    let exposed = exposed_ca_key(&found.config, found.own_namespace.as_deref(), |ns| {
        kc.namespace().as_deref() == Some(ns)
            || ctx
                .kubeconfigs
                .find(|other| other.namespace().as_deref() == Some(ns))
                .is_some()
    });
    let condition = ca_key_condition(found, exposed.as_ref(), time::OffsetDateTime::now_utc());
    let condition = match condition {
        None => {
            first_write(ctx, &found.described, None);
            return Ok(());
        }
        Some(c) if !first_write(ctx, &found.described, Some(&c)) => return Ok(()),
        Some(c) => c,
    };
    let status = AuthorityStatus {
        conditions: vec![condition.clone()],
        target: found.status.target.clone(),
    };
    let result = patch_status(
        ctx,
        found.kind,
        found.own_namespace.as_deref(),
        &found.name,
        &status,
    )
    .await;
    let reference = result.map_err(Error::kube(format!("flagging {}", found.described)))?;
    if condition.status == "False" {
        tracing::warn!(authority = %found.described, "{}", condition.message);
        crate::client::publish(
            &ctx.client,
            &ctx.reporter,
            &reference,
            EventType::Warning,
            Reason::CAKeyWithRequesters.as_str(),
            &condition.message,
            "Check",
        )
        .await;
    }
    Ok(())
}

/// Applies what the controller says of an authority (everything it says: what it leaves out
/// of `status` it no longer owns).
pub async fn patch_status(
    ctx: &Context,
    kind: AuthorityKind,
    namespace: Option<&str>,
    name: &str,
    status: &AuthorityStatus,
) -> kube::Result<ObjectReference> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match kind {
        AuthorityKind::Authority => {
            let patch = json!({"apiVersion": Authority::api_version(&()), "kind": "Authority", "status": status});
            Api::<Authority>::namespaced(ctx.client.clone(), namespace.unwrap_or_default())
                .patch_status(name, &params, &Patch::Apply(&patch))
                .await
                .map(|a| a.object_ref(&()))
        }
        AuthorityKind::ClusterAuthority => {
            let patch = json!({"apiVersion": ClusterAuthority::api_version(&()), "kind": "ClusterAuthority", "status": status});
            Api::<ClusterAuthority>::all(ctx.client.clone())
                .patch_status(name, &params, &Patch::Apply(&patch))
                .await
                .map(|a| a.object_ref(&()))
        }
    }
}

/// The CSR API signer of API server client certificates, run by kube-controller-manager.
pub const DEFAULT_CSR_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// `Ok(v)` gives `v`; `Err(problem)` returns `Ok(Err(problem))` from the enclosing function.
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(problem) => return Ok(Err(problem)),
        }
    };
}

/// Reads what a found authority points at: its signer, the server, and the CA bundle that
/// verifies it. `namespace` is the Kubeconfig's. `Ok(Err(problem))` when a person must fix
/// something.
pub async fn load(
    found: &Found,
    namespace: &str,
    ctx: &Context,
) -> Result<Result<Resolved, Problem>> {
    let Found {
        config,
        own_namespace,
        described,
        ..
    } = found;
    let target_namespace = |explicit: &Option<String>, field: &str| -> Result<String, Problem> {
        match (own_namespace.as_deref(), explicit.as_deref()) {
            (Some(own), None) => Ok(own.to_string()),
            (Some(own), Some(other)) if other == own => Ok(own.to_string()),
            (Some(_), Some(other)) => Err(Problem::new(
                Reason::InvalidAuthority,
                format!(
                    "{described}: {field} names namespace {other:?}; an Authority may only read objects of its own namespace (use a ClusterAuthority)"
                ),
            )),
            (None, Some(ns)) => Ok(ns.to_string()),
            (None, None) => Err(Problem::new(
                Reason::InvalidAuthority,
                format!("{described}: {field}.namespace is required for a ClusterAuthority"),
            )),
        }
    };

    let signer = &config.signer;
    let signer = if let Some(ca_ref) = &signer.ca_secret_ref {
        let ns = attempt!(target_namespace(&ca_ref.namespace, "signer.caSecretRef"));
        ResolvedSigner::Ca(attempt!(load_ca(ctx, &ns, &ca_ref.name, described).await?))
    } else if let Some(token) = &signer.service_account_token {
        ResolvedSigner::Token {
            audiences: token.audiences.clone(),
        }
    } else if let Some(csr) = &signer.certificate_signing_request {
        ResolvedSigner::Csr {
            signer_name: csr
                .signer_name
                .clone()
                .unwrap_or_else(|| DEFAULT_CSR_SIGNER.into()),
        }
    } else {
        return Ok(Err(Problem::new(
            Reason::InvalidAuthority,
            format!(
                "{described} has no signer: set caSecretRef, serviceAccountToken or certificateSigningRequest"
            ),
        )));
    };

    let target = match &config.target {
        None => None,
        Some(t) => {
            attempt!(target_namespace(
                &t.kubeconfig_secret_ref.namespace,
                "target.kubeconfigSecretRef"
            ));
            target_of(config, own_namespace.as_deref())
        }
    };
    // The server and CA come from `kubeconfigSecretRef`, or else from the target's kubeconfig.
    let (kubeconfig_ref, field) = match (&config.kubeconfig_secret_ref, &target) {
        (Some(r), _) => (Some(r), "kubeconfigSecretRef"),
        (None, Some(t)) => (Some(t), "target.kubeconfigSecretRef"),
        (None, None) => (None, ""),
    };
    let from_kubeconfig =
        match kubeconfig_ref {
            None => None,
            Some(r) => {
                let ns = attempt!(target_namespace(&r.namespace, field));
                let key = r.key.as_deref().unwrap_or(TARGET_KEY);
                let what = format!("{described}: {field} (Secret {ns}/{}, key {key})", r.name);
                let text =
                    attempt!(secret_key(ctx, &ns, &r.name, key).await?.ok_or_else(
                        || Problem::new(
                            Reason::KubeconfigSecretNotFound,
                            format!("{what} does not exist or lacks the key")
                        )
                    ));
                Some(attempt!(kc_file::parse(&text).map_err(|e| Problem::new(
                    Reason::KubeconfigSecretInvalid,
                    format!("{what}: {e}")
                ))))
            }
        };
    let Some(server) = config
        .server
        .clone()
        .or_else(|| from_kubeconfig.as_ref().map(|k| k.server.clone()))
    else {
        return Ok(Err(Problem::new(
            Reason::InvalidAuthority,
            format!("{described} has no server: set server or kubeconfigSecretRef"),
        )));
    };

    let server_ca_pem = match &config.ca_bundle {
        Some(bundle) => {
            let text = if let Some(inline) = &bundle.inline {
                Some(inline.clone())
            } else if let Some(r) = &bundle.secret_ref {
                let ns = attempt!(target_namespace(&r.namespace, "caBundle.secretRef"));
                secret_key(ctx, &ns, &r.name, r.key.as_deref().unwrap_or("ca.crt")).await?
            } else if let Some(r) = &bundle.config_map_ref {
                let ns = attempt!(target_namespace(&r.namespace, "caBundle.configMapRef"));
                config_map_key(ctx, &ns, &r.name, r.key.as_deref().unwrap_or("ca.crt")).await?
            } else {
                None
            };
            let text = attempt!(text.ok_or_else(|| Problem::new(Reason::CABundleNotFound,
                format!("{described}: the caBundle it names does not exist or lacks its key"),
            )));
            attempt!(parse_certificates(&text).map_err(|e| Problem::new(Reason::CABundleInvalid,
                format!("{described}: caBundle: {e}")
            )));
            text
        }
        None => match (
            from_kubeconfig.and_then(|k| k.certificate_authority_pem),
            &signer,
        ) {
            (Some(pem), _) => pem,
            (None, ResolvedSigner::Ca(ca)) => ca.certificate_pem().to_string(),
            // The cluster's own CA, which kube-controller-manager publishes in every namespace.
            (None, _) => attempt!(
                config_map_key(ctx, namespace, ROOT_CA_CONFIG_MAP, "ca.crt")
                    .await?
                    .ok_or_else(|| Problem::new(Reason::CABundleNotFound,
                        format!("{described} sets no caBundle and ConfigMap {namespace}/kube-root-ca.crt does not exist; set caBundle")
                    ))
            ),
        },
    };
    Ok(Ok(Resolved {
        server,
        server_ca_pem,
        signer,
        target,
    }))
}

/// A key of a Secret, as text; `None` when the Secret or the key does not exist.
async fn secret_key(ctx: &Context, ns: &str, name: &str, key: &str) -> Result<Option<String>> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Secret {ns}/{name}")))?;
    Ok(secret.and_then(|s| {
        s.data.and_then(|d| {
            d.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
    }))
}

/// A key of a ConfigMap; `None` when the ConfigMap or the key does not exist.
async fn config_map_key(ctx: &Context, ns: &str, name: &str, key: &str) -> Result<Option<String>> {
    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading ConfigMap {ns}/{name}")))?;
    Ok(cm.and_then(|c| c.data.and_then(|d| d.get(key).cloned())))
}

/// Reads and parses a CA Secret, reusing the parsed CA while the Secret's resourceVersion is
/// unchanged.
async fn load_ca(
    ctx: &Context,
    namespace: &str,
    name: &str,
    described: &str,
) -> Result<Result<Arc<CertificateAuthority>, Problem>> {
    let what = format!("the CA Secret {namespace}/{name} of {described}");
    let now = OffsetDateTime::now_utc();
    let key = (namespace.to_string(), name.to_string());
    let cached = ctx
        .ca_cache
        .lock()
        .ok()
        .and_then(|cache| cache.get(&key).cloned());
    // The metadata watch knows the Secret's current resourceVersion: when the parsed CA is of
    // that version, the Secret is not read again.
    let known_version = ctx
        .secret_metadata
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|m| m.resource_version());
    if let Some((cached_version, ca)) = &cached
        && known_version.as_ref() == Some(cached_version)
        && ca.not_after() > now
    {
        return Ok(Ok(ca.clone()));
    }
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading CA Secret {namespace}/{name}")))?;
    let Some(secret) = secret else {
        return Ok(Err(Problem::new(
            Reason::CASecretNotFound,
            format!("{what} does not exist; create it with tls.crt/tls.key or ca.crt/ca.key"),
        )));
    };
    let version = secret.resource_version().unwrap_or_default();
    if let Some((cached_version, ca)) = cached
        && cached_version == version
        && ca.not_after() > now
    {
        return Ok(Ok(ca));
    }
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    let (cert, key_pem) = match (
        text("tls.crt"),
        text("tls.key"),
        text("ca.crt"),
        text("ca.key"),
    ) {
        (Some(c), Some(k), _, _) => (c, k),
        (_, _, Some(c), Some(k)) => (c, k),
        _ => {
            return Ok(Err(Problem::new(
                Reason::CASecretInvalid,
                format!("{what} has neither tls.crt and tls.key nor ca.crt and ca.key"),
            )));
        }
    };
    let ca = match CertificateAuthority::from_pem(&cert, &key_pem, now) {
        Ok(ca) => Arc::new(ca),
        Err(e) => {
            let reason = match e {
                kubeconfig_authority_pki::Error::CaExpired { .. } => Reason::CAExpired,
                kubeconfig_authority_pki::Error::NotCa { .. }
                | kubeconfig_authority_pki::Error::CannotSign { .. } => Reason::CANotACA,
                _ => Reason::CASecretInvalid,
            };
            return Ok(Err(Problem::new(reason, format!("{what}: {e}"))));
        }
    };
    if let Ok(mut cache) = ctx.ca_cache.lock() {
        cache.insert(key, (version, ca.clone()));
    }
    Ok(Ok(ca))
}
