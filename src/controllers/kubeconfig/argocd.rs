//! `spec.argoCD`: the credential registered with Argo CD as a cluster Secret (label
//! `argocd.argoproj.io/secret-type: cluster`; keys `name`, `server`, `config` and the optional
//! `namespaces`, `clusterResources`, `project`) in the namespace the authority's
//! `policy.argoCD` names, rewritten with every rotation and removed with the Kubeconfig (it
//! carries the Kubeconfig's UID label, like a copy: the finalizer and the orphan sweep remove
//! it).
//!
//! A cluster Secret hands the credential to Argo CD and to whoever may use that cluster in
//! Argo CD. So it is written only when:
//! - the authority's policy names the Argo CD namespace (an admin's decision; unset: never),
//!   and lists the project, if one is asked for;
//! - no other Secret there registers the same server: Argo CD tells clusters apart by server
//!   URL, and two Secrets of one server share one cache and mix their credentials (one
//!   tenant's Applications would run with another's);
//! - no Secret of that name exists that the controller did not create.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, ResourceExt, api::ListParams};
use kubeconfig_authority_pki::kubeconfig as kc_file;
use serde_json::json;

use super::{Context, policy::glob};
use crate::{
    api::{
        ARGOCD_CLUSTER, ARGOCD_SECRET_TYPE_LABEL, ArgoCdPolicy, DATA_ANNOTATION,
        KUBECONFIG_ANNOTATION, KUBECONFIG_UID_LABEL, Kubeconfig, MANAGED_BY, MANAGED_BY_LABEL,
    },
    client,
    model::{Error, Problem, Reason, Result, Written, managed},
};

/// What registration achieved, for status.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// `<namespace>/<name>` of the cluster Secret, current.
    Current(String),
    /// Why there is none.
    Refused(Problem),
}

/// The cluster Secret's name: `<namespace>.<name>` of the Kubeconfig (a namespace holds no
/// dot, so two Kubeconfigs never share one), or `kubeconfig-<uid>` when that is too long. Pure.
pub fn secret_name(kc: &Kubeconfig, uid: &str) -> String {
    let name = format!("{}.{}", kc.namespace().unwrap_or_default(), kc.name_any());
    if name.len() <= 253 {
        name
    } else {
        format!("kubeconfig-{uid}")
    }
}

/// What the other cluster Secrets of the Argo CD namespace register.
#[derive(Debug, Default)]
pub struct Taken {
    pub servers: Vec<String>,
    pub names: Vec<String>,
}

/// The name Argo CD gives its own cluster, which no Secret may take.
const IN_CLUSTER: &str = "in-cluster";

/// The cluster Secret for the kubeconfig `text`, or the problem that forbids it. Pure.
pub fn desired(
    kc: &Kubeconfig,
    uid: &str,
    policy: Option<&ArgoCdPolicy>,
    text: &str,
    taken: &Taken,
) -> std::result::Result<Secret, Problem> {
    let refused = |message: String| Problem::new(Reason::RegistrationRefused, message);
    let Some(spec) = &kc.spec.argo_cd else {
        return Err(refused("spec.argoCD is not set".into()));
    };
    let Some(policy) = policy else {
        return Err(refused(
            "the authority's policy has no argoCD: an admin names the namespace Argo CD reads cluster Secrets from there (policy.argoCD.namespace) to let its Kubeconfigs register".into(),
        ));
    };
    let own = kc.namespace().unwrap_or_default();
    if policy.namespace == own {
        return Err(refused(format!(
            "the Argo CD namespace {own} is this Kubeconfig's own: request it from another namespace"
        )));
    }
    if let Some(project) = &spec.project {
        let allowed = policy
            .allowed_projects
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|p| glob(p, project));
        if !allowed {
            return Err(refused(format!(
                "spec.argoCD.project {project:?} is not in the authority's policy.argoCD.allowedProjects"
            )));
        }
    }
    let parsed = kc_file::parse(text).map_err(|e| {
        Problem::new(
            Reason::IssueFailed,
            format!("reading the issued kubeconfig: {e}"),
        )
    })?;
    let server = parsed.server.trim_end_matches('/').to_string();
    if taken.servers.contains(&server) {
        return Err(refused(format!(
            "another cluster Secret in namespace {} registers the server {server}: Argo CD tells clusters apart by server URL, and two would mix their credentials. Remove that one, or register through a server URL of its own",
            policy.namespace
        )));
    }
    let encode = |pem: &Option<String>| pem.as_ref().map(|p| STANDARD.encode(p.as_bytes()));
    let mut tls = serde_json::Map::new();
    if let Some(ca) = encode(&parsed.certificate_authority_pem) {
        tls.insert("caData".into(), ca.into());
    }
    if let Some(cert) = encode(&parsed.client_certificate_pem) {
        tls.insert("certData".into(), cert.into());
    }
    if let Some(key) = encode(&parsed.client_key_pem) {
        tls.insert("keyData".into(), key.into());
    }
    let mut config = json!({"tlsClientConfig": tls});
    if let Some(token) = &parsed.token {
        config["bearerToken"] = token.clone().into();
    }
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("{own}.{}", kc.name_any()));
    if name == IN_CLUSTER || taken.names.contains(&name) {
        return Err(refused(format!(
            "another cluster in namespace {} is named {name:?} (Argo CD's own is in-cluster): Applications that name their destination would find two. Choose another spec.argoCD.name",
            policy.namespace
        )));
    }
    let mut data = BTreeMap::from([
        ("name".to_string(), name),
        ("server".to_string(), server),
        ("config".to_string(), config.to_string()),
    ]);
    if !spec.namespaces.is_empty() {
        data.insert("namespaces".into(), spec.namespaces.join(","));
        data.insert(
            "clusterResources".into(),
            spec.cluster_resources.unwrap_or(false).to_string(),
        );
    }
    if let Some(project) = &spec.project {
        data.insert("project".into(), project.clone());
    }
    let data: BTreeMap<String, ByteString> = data
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect();
    let digest = managed::digest_of(&data, None);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(kc, uid)),
            namespace: Some(policy.namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (KUBECONFIG_UID_LABEL.to_string(), uid.to_string()),
                (
                    ARGOCD_SECRET_TYPE_LABEL.to_string(),
                    ARGOCD_CLUSTER.to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    KUBECONFIG_ANNOTATION.to_string(),
                    format!("{own}/{}", kc.name_any()),
                ),
                (DATA_ANNOTATION.to_string(), digest.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}

/// Brings the cluster Secret in line: written when the Kubeconfig holds a valid credential
/// (`text`, its kubeconfig) and registration is allowed, removed otherwise. `None` when the
/// Kubeconfig asks for none and has none.
pub async fn apply(
    kc: &Kubeconfig,
    uid: &str,
    text: Option<&str>,
    policy: Option<&ArgoCdPolicy>,
    ctx: &Context,
) -> Result<Option<Registered>> {
    let observed = ctx.secrets_of(uid, |s| s.argo_cd);
    if kc.spec.argo_cd.is_none() && observed.is_empty() {
        return Ok(None);
    }
    // Whether the cache holds this very Secret, untouched.
    let is_current = |secret: &Secret| {
        let digest = secret.annotations().get(DATA_ANNOTATION);
        observed.iter().any(|o| {
            o.namespace == secret.namespace().unwrap_or_default()
                && o.name == secret.name_any()
                && o.data_digest == digest.and_then(|d| managed::Digest::parse(d))
                && o.intact
        })
    };
    let wanted = match (&kc.spec.argo_cd, text) {
        (None, _) => None,
        (Some(_), None) => Some(Err(Problem::new(
            Reason::RegistrationRefused,
            "no valid credential to register yet".to_string(),
        ))),
        (Some(_), Some(text)) => {
            // What the other cluster Secrets hold is listed only when this one must be
            // written (a current one was checked when it was written).
            let free = desired(kc, uid, policy, text, &Taken::default());
            match policy {
                Some(policy) if free.as_ref().is_ok_and(|s| !is_current(s)) => {
                    let taken = taken(ctx, &policy.namespace, uid).await?;
                    Some(desired(kc, uid, Some(policy), text, &taken))
                }
                _ => Some(free),
            }
        }
    };
    let kept = match &wanted {
        Some(Ok(secret)) => Some((secret.namespace().unwrap_or_default(), secret.name_any())),
        _ => None,
    };
    let stale: Vec<_> = observed
        .iter()
        .filter(|o| {
            kept.as_ref()
                .is_none_or(|(ns, name)| o.namespace != *ns || o.name != *name)
        })
        .collect();
    let current = matches!(&wanted, Some(Ok(secret)) if is_current(secret));
    // An unmanaged Secret in the way: nothing is written, and nothing taken from the budget
    // (a look that writes nothing spends nothing).
    let foreign = match &kept {
        Some((ns, name)) if !current => ctx.foreign_secret(&observed, ns, name, uid).await?,
        _ => false,
    };
    if !stale.is_empty() || (kept.is_some() && !current && !foreign) {
        ctx.spend(uid, Written::Copies)?;
    }
    for o in stale {
        client::delete_ignoring_absent(
            Api::<Secret>::namespaced(ctx.client.clone(), &o.namespace),
            &o.name,
        )
        .await?;
    }
    let secret = match wanted {
        None => return Ok(None),
        Some(Err(problem)) => return Ok(Some(Registered::Refused(problem))),
        Some(Ok(secret)) => secret,
    };
    let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
    let described = format!("{ns}/{name}");
    if current {
        return Ok(Some(Registered::Current(described)));
    }
    if foreign {
        return Ok(Some(Registered::Refused(Problem::new(
            Reason::SecretConflict,
            format!(
                "Secret {described} exists and was not created by this controller: left untouched; delete it, or name this Kubeconfig otherwise"
            ),
        ))));
    }
    ctx.write_managed_secret(&ns, &secret)
        .await
        .map_err(Error::kube(format!(
            "writing the Argo CD cluster Secret {described}"
        )))?;
    Ok(Some(Registered::Current(described)))
}

/// The servers and names the cluster Secrets of `namespace` register, other than the one of
/// the Kubeconfig `uid`.
async fn taken(ctx: &Context, namespace: &str, uid: &str) -> Result<Taken> {
    let clusters =
        ListParams::default().labels(&format!("{ARGOCD_SECRET_TYPE_LABEL}={ARGOCD_CLUSTER}"));
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .list(&clusters)
        .await
        .map_err(Error::kube(format!(
            "listing the Argo CD cluster Secrets of namespace {namespace}"
        )))?;
    let mut taken = Taken::default();
    let others = secrets
        .items
        .iter()
        .filter(|s| s.labels().get(KUBECONFIG_UID_LABEL).map(String::as_str) != Some(uid));
    for data in others.filter_map(|s| s.data.as_ref()) {
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).to_string())
        };
        if let Some(server) = text("server") {
            taken.servers.push(server.trim_end_matches('/').to_string());
        }
        taken.names.extend(text("name"));
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(argo_cd: serde_json::Value) -> Kubeconfig {
        serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
            "metadata": {"name": "deployer", "namespace": "team-a", "uid": "u1"},
            "spec": {"username": "x", "validity": "1h", "secretRef": {"name": "k"}, "argoCD": argo_cd},
        }))
        .unwrap()
    }

    fn policy(projects: Option<Vec<&str>>) -> ArgoCdPolicy {
        ArgoCdPolicy {
            namespace: "argocd".into(),
            allowed_projects: projects.map(|p| p.into_iter().map(Into::into).collect()),
        }
    }

    fn text(token: Option<&str>) -> String {
        let credential = match token {
            Some(token) => kc_file::Credential::Token(token),
            None => kc_file::Credential::ClientCertificate {
                certificate_pem: "CERT",
                private_key_pem: "KEY",
            },
        };
        kc_file::render(&kc_file::KubeconfigSpec {
            cluster_name: "c",
            user_name: "u",
            context_name: "c",
            server: "https://api.example.com:6443/",
            certificate_authority_pem: Some("CA"),
            namespace: None,
            credential,
        })
        .unwrap()
    }

    fn data(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn a_certificate_becomes_a_cluster_secret_argo_cd_reads() {
        let kc = kubeconfig(json!({"namespaces": ["a", "b"], "project": "team-a"}));
        let secret = desired(
            &kc,
            "u1",
            Some(&policy(Some(vec!["team-*"]))),
            &text(None),
            &Taken::default(),
        )
        .unwrap();
        assert_eq!(secret.name_any(), "team-a.deployer");
        assert_eq!(secret.namespace().unwrap(), "argocd");
        assert_eq!(secret.labels()[ARGOCD_SECRET_TYPE_LABEL], "cluster");
        assert_eq!(secret.labels()[KUBECONFIG_UID_LABEL], "u1");
        assert_eq!(data(&secret, "name"), "team-a.deployer");
        assert_eq!(data(&secret, "server"), "https://api.example.com:6443");
        assert_eq!(data(&secret, "namespaces"), "a,b");
        assert_eq!(data(&secret, "clusterResources"), "false");
        assert_eq!(data(&secret, "project"), "team-a");
        let config: serde_json::Value = serde_json::from_str(&data(&secret, "config")).unwrap();
        let tls = &config["tlsClientConfig"];
        assert_eq!(tls["certData"], STANDARD.encode("CERT"));
        assert_eq!(tls["keyData"], STANDARD.encode("KEY"));
        assert!(tls["caData"].is_string() && config.get("bearerToken").is_none());

        let token = desired(
            &kubeconfig(json!({"name": "t"})),
            "u1",
            Some(&policy(None)),
            &text(Some("tok")),
            &Taken::default(),
        )
        .unwrap();
        let config: serde_json::Value = serde_json::from_str(&data(&token, "config")).unwrap();
        assert_eq!(config["bearerToken"], "tok");
        assert!(config["tlsClientConfig"].get("certData").is_none());
        assert_eq!(data(&token, "name"), "t");
        assert!(token.data.as_ref().unwrap().get("namespaces").is_none());
    }

    #[test]
    fn registration_needs_the_policy_a_free_server_and_an_allowed_project() {
        let kc = kubeconfig(json!({}));
        let free = Taken::default();
        let refused = |p: Option<&ArgoCdPolicy>, kc: &Kubeconfig, taken: &Taken| {
            desired(kc, "u1", p, &text(None), taken).unwrap_err()
        };
        assert!(
            refused(None, &kc, &free)
                .message
                .contains("policy.argoCD.namespace")
        );
        let taken = refused(
            Some(&policy(None)),
            &kc,
            &Taken {
                servers: vec!["https://api.example.com:6443".to_string()],
                names: vec![],
            },
        );
        assert_eq!(taken.reason, Reason::RegistrationRefused);
        assert!(
            taken.message.contains("registers the server"),
            "{}",
            taken.message
        );
        for name in ["in-cluster", "prod"] {
            let named = kubeconfig(json!({"name": name}));
            let taken = Taken {
                servers: vec![],
                names: vec!["prod".into()],
            };
            let problem = refused(Some(&policy(None)), &named, &taken);
            assert!(
                problem.message.contains("Choose another"),
                "{}",
                problem.message
            );
        }
        let project = kubeconfig(json!({"project": "platform"}));
        assert!(
            refused(Some(&policy(None)), &project, &free)
                .message
                .contains("allowedProjects")
        );
        assert!(
            refused(Some(&policy(Some(vec!["team-*"]))), &project, &free)
                .message
                .contains("allowedProjects")
        );
        let mut own = policy(None);
        own.namespace = "team-a".into();
        assert!(refused(Some(&own), &kc, &free).message.contains("own"));
    }
}
