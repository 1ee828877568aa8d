//! Onboarding without writing a Kubeconfig: a ServiceAccount annotated with
//! `kubeconfig-authority.dev/authority` (or Capsule's `capsule.addon.fluxcd/enabled: "true"`,
//! which uses the controller's default authority) gets a token Kubeconfig, owned by the
//! ServiceAccount, whose Secret is `<serviceaccount>-kubeconfig` as Capsule's Flux addon names
//! it. Removing the annotation removes it; deleting the ServiceAccount lets the garbage
//! collector remove it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{EventType, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use tracing::{Instrument, info, warn};

use crate::api::{AuthorityKind, AuthorityRef, FIELD_MANAGER, Kubeconfig};
use crate::model::{Error, Reason, Result};

/// `<name>` (an Authority of the ServiceAccount's namespace) or `ClusterAuthority/<name>`.
pub const AUTHORITY_ANNOTATION: &str = "kubeconfig-authority.dev/authority";
/// The token lifetime to ask for (a duration); default [`DEFAULT_VALIDITY`].
pub const VALIDITY_ANNOTATION: &str = "kubeconfig-authority.dev/validity";
/// Capsule's Flux addon's opt-in, honoured with the controller's default authority.
pub const CAPSULE_FLUX_ANNOTATION: &str = "capsule.addon.fluxcd/enabled";
/// On the Kubeconfigs made here: the ServiceAccount's name.
pub const SERVICE_ACCOUNT_LABEL: &str = "kubeconfig-authority.dev/serviceaccount";
pub const DEFAULT_VALIDITY: &str = "1h";

pub struct Context {
    pub client: kube::Client,
    /// The Kubeconfig controller's cache.
    pub kubeconfigs: Store<Kubeconfig>,
    pub reporter: Reporter,
    pub default_authority: Option<AuthorityRef>,
}

/// The authority an annotated ServiceAccount asks for: `Ok(None)` when it asks for none.
pub fn wanted(
    sa: &ServiceAccount,
    default: Option<&AuthorityRef>,
) -> Result<Option<AuthorityRef>, String> {
    let annotations = sa.annotations();
    if let Some(value) = annotations.get(AUTHORITY_ANNOTATION) {
        let (kind, name) = match value.split_once('/') {
            Some(("ClusterAuthority", name)) => (AuthorityKind::ClusterAuthority, name),
            Some(("Authority", name)) => (AuthorityKind::Authority, name),
            Some(_) => {
                return Err(format!(
                    "{AUTHORITY_ANNOTATION}: {value:?} is neither NAME, Authority/NAME nor ClusterAuthority/NAME"
                ));
            }
            None => (AuthorityKind::Authority, value.as_str()),
        };
        if name.is_empty() {
            return Err(format!("{AUTHORITY_ANNOTATION} names no authority"));
        }
        return Ok(Some(AuthorityRef {
            kind,
            name: name.to_string(),
        }));
    }
    if annotations
        .get(CAPSULE_FLUX_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return default.cloned().map(Some).ok_or_else(|| {
            format!(
                "{CAPSULE_FLUX_ANNOTATION} is set but the controller has no --default-authority to use; set {AUTHORITY_ANNOTATION} instead"
            )
        });
    }
    Ok(None)
}

/// The name of the Kubeconfig and of its Secret.
pub fn kubeconfig_name(sa: &str) -> String {
    format!("{sa}-kubeconfig")
}

/// The Kubeconfig made for a ServiceAccount. Pure.
pub fn desired(sa: &ServiceAccount, authority: &AuthorityRef) -> serde_json::Value {
    let name = kubeconfig_name(&sa.name_any());
    let validity = sa
        .annotations()
        .get(VALIDITY_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| DEFAULT_VALIDITY.into());
    json!({
        "apiVersion": Kubeconfig::api_version(&()),
        "kind": Kubeconfig::kind(&()),
        "metadata": {
            "name": name,
            "namespace": sa.namespace(),
            "labels": {SERVICE_ACCOUNT_LABEL: sa.name_any()},
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ServiceAccount", "name": sa.name_any(),
                "uid": sa.uid(), "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "authorityRef": authority,
            "serviceAccountRef": {"name": sa.name_any()},
            "validity": validity,
            "secretRef": {"name": name},
        },
    })
}

pub async fn reconcile(sa: Arc<ServiceAccount>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = sa.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = sa.uid().ok_or(Error::MissingMetadata("uid"))?;
    let span =
        tracing::info_span!("onboard", serviceaccount = %format!("{namespace}/{}", sa.name_any()));
    async {
        let api = Api::<Kubeconfig>::namespaced(ctx.client.clone(), &namespace);
        let name = kubeconfig_name(&sa.name_any());
        crate::client::filled(&ctx.kubeconfigs).await;
        let existing = ctx
            .kubeconfigs
            .get(&ObjectRef::new(&name).within(&namespace));
        let ours = existing.as_ref().map(|kc| {
            kc.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        });
        let wanted = if sa.meta().deletion_timestamp.is_some() {
            Ok(None)
        } else {
            wanted(&sa, ctx.default_authority.as_ref())
        };
        match (wanted, ours) {
            (Ok(Some(_)), Some(false)) => {
                let note = format!(
                    "Kubeconfig {namespace}/{name} exists and does not belong to this ServiceAccount; it is left alone"
                );
                warn(&ctx, &sa, Reason::KubeconfigConflict, &note).await;
            }
            (Ok(Some(authority)), _) => {
                let object = desired(&sa, &authority);
                let changed = existing.as_ref().is_none_or(|kc| {
                    serde_json::to_value(&kc.spec).ok().as_ref() != Some(&object["spec"])
                });
                if changed {
                    api.patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&object),
                    )
                    .await
                    .map_err(Error::kube(format!("writing Kubeconfig {name}")))?;
                    info!("made Kubeconfig {name} for the ServiceAccount");
                }
            }
            (Ok(None), Some(true)) => {
                crate::client::delete_ignoring_absent(api, &name).await?;
                info!("removed Kubeconfig {name}: the ServiceAccount no longer asks for one");
            }
            (Ok(None), _) => {}
            (Err(message), _) => warn(&ctx, &sa, Reason::InvalidAnnotation, &message).await,
        }
        Ok(Action::await_change())
    }
    .instrument(span)
    .await
}

async fn warn(ctx: &Context, sa: &ServiceAccount, reason: Reason, note: &str) {
    warn!(%reason, "{note}");
    let reference = sa.object_ref(&());
    crate::client::publish(
        &ctx.client,
        &ctx.reporter,
        &reference,
        EventType::Warning,
        reason.as_str(),
        note,
        "Onboard",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(annotations: serde_json::Value) -> ServiceAccount {
        serde_json::from_value(json!({"metadata": {"name": "flux", "namespace": "oil", "uid": "u", "annotations": annotations}})).unwrap()
    }

    #[test]
    fn annotations_name_the_authority() {
        let default = AuthorityRef {
            kind: AuthorityKind::ClusterAuthority,
            name: "proxy".into(),
        };
        assert_eq!(wanted(&sa(json!({})), Some(&default)), Ok(None));
        let own = wanted(&sa(json!({AUTHORITY_ANNOTATION: "tokens"})), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (own.kind, own.name.as_str()),
            (AuthorityKind::Authority, "tokens")
        );
        let cluster = wanted(
            &sa(json!({AUTHORITY_ANNOTATION: "ClusterAuthority/x"})),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(cluster.kind, AuthorityKind::ClusterAuthority);
        assert!(wanted(&sa(json!({AUTHORITY_ANNOTATION: "Role/x"})), None).is_err());
        let capsule = sa(json!({CAPSULE_FLUX_ANNOTATION: "true"}));
        assert_eq!(wanted(&capsule, Some(&default)), Ok(Some(default.clone())));
        assert!(
            wanted(&capsule, None)
                .unwrap_err()
                .contains("--default-authority")
        );
        assert_eq!(
            wanted(
                &sa(json!({CAPSULE_FLUX_ANNOTATION: "false"})),
                Some(&default)
            ),
            Ok(None)
        );
    }

    #[test]
    fn the_kubeconfig_belongs_to_the_service_account() {
        let s = sa(json!({VALIDITY_ANNOTATION: "2h"}));
        let authority = AuthorityRef {
            kind: AuthorityKind::Authority,
            name: "tokens".into(),
        };
        let object = desired(&s, &authority);
        assert_eq!(object["metadata"]["name"], "flux-kubeconfig");
        assert_eq!(object["spec"]["secretRef"]["name"], "flux-kubeconfig");
        assert_eq!(object["spec"]["validity"], "2h");
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "u");
        let kc: Kubeconfig = serde_json::from_value(object.clone()).unwrap();
        assert_eq!(serde_json::to_value(&kc.spec).unwrap(), object["spec"]);
    }
}
