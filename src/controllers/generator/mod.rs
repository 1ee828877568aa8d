//! The KubeconfigGenerator reconciler: one Kubeconfig per matching object, owned by the
//! generator and labelled with it, so that issuance, renewal and RBAC stay the Kubeconfig
//! controller's job (per object, in parallel). For kinds that stand for a cluster (Kamaji's
//! TenantControlPlane, Cluster API's Cluster) an Authority per object is made too, from its CA
//! and admin kubeconfig Secrets, and binds in that cluster.

mod targets;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Resource, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    core::{Selector, SelectorExt},
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{Instrument, info, warn};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{
    Authority, AuthorityConfig, AuthorityKind, AuthorityRef, AuthoritySpec, FIELD_MANAGER,
    GeneratorError, KeyRef, Kubeconfig, KubeconfigGenerator, KubeconfigGeneratorSpec,
    KubeconfigGeneratorStatus, KubeconfigSpec, MANAGED_BY, MANAGED_BY_LABEL, SecretRef, Signer,
    TargetCluster,
};
use crate::{
    client::{delete_ignoring_absent, filled},
    model::{Error, Reason, Result},
};

/// On the Kubeconfigs and Authorities a generator makes: its name.
pub const GENERATOR_LABEL: &str = "kubeconfig-authority.dev/generator";
/// On them too: `<namespace>/<name>` of the object they were made for.
pub const TARGET_ANNOTATION: &str = "kubeconfig-authority.dev/target";
const DEFAULT_NAME_TEMPLATE: &str = "{object}-{generator}";
/// How often a generator is looked at again anyway.
const RESYNC: Duration = Duration::from_secs(300);

pub use targets::Context;

/// Reads a field of an object: `metadata.name`, `metadata.labels['team']`, `spec.a.b`. Pure.
pub fn field(object: &Value, path: &str) -> Result<String, String> {
    let mut current = object;
    let mut rest = path.trim();
    if rest.is_empty() {
        return Err("the field path is empty".into());
    }
    while !rest.is_empty() {
        let (key, after) = if let Some(inner) = rest.strip_prefix('[') {
            let quote = inner
                .chars()
                .next()
                .filter(|c| *c == '\'' || *c == '"')
                .ok_or_else(|| format!("{path}: write map keys as ['key']"))?;
            let end = inner[1..]
                .find(quote)
                .ok_or_else(|| format!("{path}: unclosed quote"))?;
            let key = &inner[1..1 + end];
            let after = inner[1 + end + 1..]
                .strip_prefix(']')
                .ok_or_else(|| format!("{path}: expected ] after the key"))?;
            (key, after)
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if key.is_empty() {
            return Err(format!("{path}: an empty field name"));
        }
        current = current
            .get(key)
            .ok_or_else(|| format!("field {path} does not exist on the object"))?;
        rest = after.strip_prefix('.').unwrap_or(after);
    }
    match current {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(format!("field {path} is empty")),
        other => Err(format!(
            "field {path} is {}, not a string",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "a list",
                _ => "an object",
            }
        )),
    }
}

fn value(v: &crate::api::CompoundValue, object: &Value) -> Result<String, String> {
    match (&v.string_value, &v.from_definition) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(path)) => field(object, path),
        (None, None) => Err("a value sets neither stringValue nor fromDefinition".into()),
    }
}

/// The Kubeconfig (and, for a TenantControlPlane, the Authority) a generator wants for one
/// object. Pure.
pub fn desired_for(
    generator: &KubeconfigGenerator,
    object: &DynamicObject,
) -> Result<(Option<Authority>, Kubeconfig), String> {
    let spec = &generator.spec;
    let target = spec.target.clone().unwrap_or_default();
    let cluster_kind = target.cluster_kind();
    let object_name = object.name_any();
    let namespace = object
        .namespace()
        .ok_or("the object is not namespaced: a kubeconfig lives in the object's namespace")?;
    let as_json = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let user = value(&spec.user, &as_json).map_err(|e| format!("user: {e}"))?;
    let groups = spec
        .groups
        .iter()
        .map(|g| value(g, &as_json))
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| format!("groups: {e}"))?;
    let name = spec
        .secret_name
        .as_deref()
        .unwrap_or(DEFAULT_NAME_TEMPLATE)
        .replace("{object}", &object_name)
        .replace("{generator}", &generator.name_any());
    if name.len() > 253
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        || name.starts_with(['-', '.'])
        || name.ends_with(['-', '.'])
    {
        return Err(format!(
            "the name {name:?} made from spec.secretName is not a valid Secret name"
        ));
    }
    let owner = generator
        .controller_owner_ref(&())
        .ok_or("the generator has no UID yet")?;
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(BTreeMap::from([
            (GENERATOR_LABEL.to_string(), generator.name_any()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ])),
        annotations: Some(BTreeMap::from([(
            TARGET_ANNOTATION.to_string(),
            format!("{namespace}/{object_name}"),
        )])),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    let (authority, authority_ref) = if let Some(kind) = cluster_kind {
        let key = spec
            .control_plane_endpoint_from
            .as_deref()
            .unwrap_or(kind.kubeconfig_key);
        // The cluster's admin kubeconfig: its server and CA go into the kubeconfigs, and the
        // bindings of spec.authorization are made in that cluster.
        let config = AuthorityConfig {
            server: None,
            kubeconfig_secret_ref: None,
            target: Some(TargetCluster {
                kubeconfig_secret_ref: KeyRef {
                    name: format!("{object_name}{}", kind.kubeconfig_suffix),
                    key: Some(key.to_string()),
                    namespace: None,
                },
            }),
            ca_bundle: None,
            signer: Signer {
                ca_secret_ref: Some(crate::api::ObjectRef {
                    name: format!("{object_name}{}", kind.ca_suffix),
                    namespace: None,
                }),
                service_account_token: None,
                certificate_signing_request: None,
            },
            policy: spec.policy.clone(),
        };
        let authority = Authority {
            metadata: metadata.clone(),
            spec: AuthoritySpec { config },
            status: None,
        };
        let aref = AuthorityRef {
            kind: AuthorityKind::Authority,
            name: name.clone(),
        };
        (Some(authority), aref)
    } else {
        let aref = spec
            .authority_ref
            .clone()
            .ok_or("spec.authorityRef is required for this kind of target")?;
        (None, aref)
    };
    let kubeconfig = Kubeconfig {
        metadata,
        spec: KubeconfigSpec {
            authority_ref: Some(authority_ref),
            username: Some(user),
            service_account_ref: None,
            groups: groups.into_iter().collect(),
            validity: spec.validity.clone(),
            renew_before: spec.renew_before.clone(),
            private_key: spec.private_key.clone(),
            secret_ref: SecretRef {
                name,
                kubeconfig_keys: spec.kubeconfig_keys.clone(),
                certificate_keys: spec.certificate_keys,
            },
            authorization: spec.authorization.clone().map(Box::new),
            distribution: None,
            argo_cd: spec.argo_cd.clone().map(|mut a| {
                a.name = a
                    .name
                    .or_else(|| Some(format!("{namespace}.{object_name}")));
                Box::new(a)
            }),
        },
        status: None,
    };
    Ok((authority, kubeconfig))
}

/// The finalizer that removes what a generator made before it goes (rather than leaving it
/// to the garbage collector's own pace).
pub const FINALIZER: &str = "kubeconfig-authority.dev/generated";

pub async fn reconcile(generator: Arc<KubeconfigGenerator>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("generate", generator = %generator.name_any());
    let api = Api::<KubeconfigGenerator>::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, generator, |event| async {
        match event {
            FinalizerEvent::Apply(generator) => generate(generator, &ctx).await,
            FinalizerEvent::Cleanup(generator) => {
                filled(&ctx.kubeconfigs).await;
                filled(&ctx.authorities).await;
                remove_except(&generator, &ctx, &HashSet::new()).await?;
                info!("removed everything the generator made");
                Ok(Action::await_change())
            }
        }
    })
    .instrument(span)
    .await;
    crate::client::finalizer_outcome(result)
}

/// Deletes the Kubeconfigs and Authorities the generator owns, except those in `keep`.
async fn remove_except(
    generator: &KubeconfigGenerator,
    ctx: &Context,
    keep: &HashSet<(String, String)>,
) -> Result<()> {
    let uid = generator.uid().unwrap_or_default();
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.iter().flatten().any(|o| o.uid == uid)
    };
    for kc in ctx.kubeconfigs.state().iter().filter(|k| owned(k.meta())) {
        let key = (kc.namespace().unwrap_or_default(), kc.name_any());
        if !keep.contains(&key) && kc.meta().deletion_timestamp.is_none() {
            delete_ignoring_absent(
                Api::<Kubeconfig>::namespaced(ctx.client.clone(), &key.0),
                &key.1,
            )
            .await?;
            info!(kubeconfig = %format!("{}/{}", key.0, key.1), "removed: its object is gone or no longer matches");
        }
    }
    for a in ctx.authorities.state().iter().filter(|a| owned(a.meta())) {
        let key = (a.namespace().unwrap_or_default(), a.name_any());
        if !keep.contains(&key) {
            delete_ignoring_absent(
                Api::<Authority>::namespaced(ctx.client.clone(), &key.0),
                &key.1,
            )
            .await?;
        }
    }
    Ok(())
}

async fn generate(generator: Arc<KubeconfigGenerator>, ctx: &Context) -> Result<Action> {
    filled(&ctx.namespaces).await;
    filled(&ctx.kubeconfigs).await;
    filled(&ctx.authorities).await;
    let target = generator.spec.target.clone().unwrap_or_default();
    let resource = match ctx.resource(&target).await {
        Ok(r) => r,
        Err(message) => {
            write_status(&generator, ctx, not_served(&generator, message)).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };
    ctx.watch(&resource);

    let namespaces = selected_namespaces(&generator.spec, ctx);
    let selector = Selector::try_from(target.selector.clone()).map_err(|e| {
        Error::Startup(format!(
            "spec.target.selector of {}: {e}",
            generator.name_any()
        ))
    });
    let selector = match selector {
        Ok(s) => s,
        Err(e) => {
            write_status(&generator, ctx, not_served(&generator, e.to_string())).await?;
            return Ok(Action::await_change());
        }
    };
    let objects = Api::<DynamicObject>::all_with(ctx.client.clone(), &resource)
        .list(&ListParams::default().labels(&selector.to_string()))
        .await
        .map_err(Error::kube(format!("listing {}", resource.plural)))?;
    let mut errors = Vec::new();
    let mut wanted: Vec<(String, String, Option<Authority>, Kubeconfig)> = Vec::new();
    let mut matched = 0;
    for object in objects
        .items
        .iter()
        .filter(|o| o.namespace().is_some_and(|ns| namespaces.contains(&ns)))
    {
        matched += 1;
        let id = format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        );
        match desired_for(&generator, object) {
            Ok((authority, kubeconfig)) => {
                let ns = object.namespace().unwrap_or_default();
                let name = kubeconfig.name_any();
                wanted.push((ns, name, authority, kubeconfig));
            }
            Err(message) => errors.push(GeneratorError {
                resource: id,
                message,
            }),
        }
    }

    // Apply what differs, per object; delete what is no longer wanted.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (ns, name, authority, kubeconfig) in &wanted {
        if let Some(authority) = authority {
            let current = ctx
                .authorities
                .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns));
            if current.is_none_or(|c| !same(&c.spec, &authority.spec, c.labels(), &generator)) {
                Api::<Authority>::namespaced(ctx.client.clone(), ns)
                    .patch(name, &params, &Patch::Apply(authority))
                    .await
                    .map_err(Error::kube(format!("writing Authority {ns}/{name}")))?;
            }
        }
        let current = ctx
            .kubeconfigs
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns));
        if current.is_none_or(|c| !same(&c.spec, &kubeconfig.spec, c.labels(), &generator)) {
            Api::<Kubeconfig>::namespaced(ctx.client.clone(), ns)
                .patch(name, &params, &Patch::Apply(kubeconfig))
                .await
                .map_err(Error::kube(format!("writing Kubeconfig {ns}/{name}")))?;
            info!(kubeconfig = %format!("{ns}/{name}"), "wrote the Kubeconfig for {}", target_of(kubeconfig));
        }
    }
    let keep: HashSet<(String, String)> = wanted
        .iter()
        .map(|(ns, name, _, _)| (ns.clone(), name.clone()))
        .collect();
    remove_except(&generator, ctx, &keep).await?;

    // Status: matched objects, Ready kubeconfigs, and why the others are not.
    let mut available = 0;
    for (ns, name, _, kubeconfig) in &wanted {
        let target = target_of(kubeconfig);
        let ready = ctx
            .kubeconfigs
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
            .and_then(|kc| {
                kc.status.as_ref().and_then(|s| {
                    let current = s.observed_generation == kc.metadata.generation;
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| (current, c.clone()))
                })
            });
        match ready {
            Some((true, c)) if c.status == "True" => available += 1,
            Some((true, c)) => errors.push(GeneratorError {
                resource: target.to_string(),
                message: format!("{}: {}", c.reason, c.message),
            }),
            _ => {}
        }
    }
    errors.sort();
    let status = status(&generator, matched, available, errors);
    write_status(&generator, ctx, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// Whether an object made earlier still matches what is wanted (spec and generator label).
fn same<S: PartialEq>(
    spec: &S,
    wanted: &S,
    labels: &BTreeMap<String, String>,
    generator: &KubeconfigGenerator,
) -> bool {
    labels.get(GENERATOR_LABEL) == Some(&generator.name_any()) && spec == wanted
}

/// The object (`namespace/name`) a generated Kubeconfig is for.
fn target_of(kubeconfig: &Kubeconfig) -> &str {
    kubeconfig
        .annotations()
        .get(TARGET_ANNOTATION)
        .map(String::as_str)
        .unwrap_or_default()
}

fn selected_namespaces(spec: &KubeconfigGeneratorSpec, ctx: &Context) -> HashSet<String> {
    let selector: Option<Selector> = Selector::try_from(spec.namespace_selector.clone()).ok();
    ctx.namespaces
        .state()
        .iter()
        .filter(|n| selector.as_ref().is_some_and(|s| s.matches(n.labels())))
        .map(|n| n.name_any())
        .collect()
}

/// The status for a generator: counts, errors and a Ready condition. Pure.
pub fn status(
    generator: &KubeconfigGenerator,
    resources: usize,
    available: usize,
    errors: Vec<GeneratorError>,
) -> KubeconfigGeneratorStatus {
    let (ready, reason, message) = if errors.is_empty() && available == resources {
        (
            "True",
            Reason::Generated,
            format!("{available} of {resources} objects have a Ready kubeconfig"),
        )
    } else if errors.is_empty() {
        (
            "False",
            Reason::Pending,
            format!(
                "{available} of {resources} objects have a Ready kubeconfig; the others are being issued"
            ),
        )
    } else {
        (
            "False",
            Reason::Errors,
            format!(
                "{available} of {resources} objects have a Ready kubeconfig; {} have errors (see status.errors)",
                errors.len()
            ),
        )
    };
    KubeconfigGeneratorStatus {
        conditions: vec![condition(generator, ready, reason, message)],
        observed_generation: generator.metadata.generation,
        resources: resources as i32,
        available_resources: available as i32,
        errors,
    }
}

fn not_served(generator: &KubeconfigGenerator, message: String) -> KubeconfigGeneratorStatus {
    KubeconfigGeneratorStatus {
        conditions: vec![condition(
            generator,
            "False",
            Reason::InvalidTarget,
            message,
        )],
        observed_generation: generator.metadata.generation,
        ..KubeconfigGeneratorStatus::default()
    }
}

fn condition(
    generator: &KubeconfigGenerator,
    status: &str,
    reason: Reason,
    message: String,
) -> Condition {
    crate::model::condition(
        &generator.status.clone().unwrap_or_default().conditions,
        "Ready",
        status,
        reason,
        message,
        generator.metadata.generation,
        OffsetDateTime::now_utc(),
    )
}

async fn write_status(
    generator: &KubeconfigGenerator,
    ctx: &Context,
    status: KubeconfigGeneratorStatus,
) -> Result<()> {
    if generator.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": KubeconfigGenerator::api_version(&()),
        "kind": KubeconfigGenerator::kind(&()),
        "status": status,
    });
    Api::<KubeconfigGenerator>::all(ctx.client.clone())
        .patch_status(
            &generator.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("updating the generator's status"))?;
    Ok(())
}

pub fn error_policy(
    generator: Arc<KubeconfigGenerator>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    warn!(generator = %generator.name_any(), reason = %error.reason(), "{error}");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(name: &str, labels: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": "alpha", "labels": labels},
            "spec": {"replicas": 2, "version": "v1.35.0"},
        }))
        .unwrap()
    }

    fn generator(spec: Value) -> KubeconfigGenerator {
        serde_json::from_value(json!({
            "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "KubeconfigGenerator",
            "metadata": {"name": "tenant", "uid": "g-uid"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn fields_are_read_by_path() {
        let object =
            serde_json::to_value(tcp("prod", json!({"team": "red", "a.b/c": "x"}))).unwrap();
        assert_eq!(field(&object, "metadata.name").unwrap(), "prod");
        assert_eq!(field(&object, "metadata.namespace").unwrap(), "alpha");
        assert_eq!(field(&object, "metadata.labels['team']").unwrap(), "red");
        assert_eq!(field(&object, "metadata.labels[\"a.b/c\"]").unwrap(), "x");
        assert_eq!(field(&object, "spec.version").unwrap(), "v1.35.0");
        assert!(
            field(&object, "spec.replicas")
                .unwrap_err()
                .contains("a number, not a string")
        );
        assert!(field(&object, "spec").unwrap_err().contains("an object"));
        assert!(
            field(&object, "metadata.labels['missing']")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            field(&object, "metadata.labels[team]")
                .unwrap_err()
                .contains("['key']")
        );
        assert!(field(&object, "").is_err());
        assert!(field(&object, "metadata..name").is_err());
    }

    #[test]
    fn a_tenant_control_plane_gets_an_authority_and_a_kubeconfig() {
        let g = generator(json!({
            "user": {"fromDefinition": "metadata.name"},
            "groups": [{"stringValue": "customer-admins"}, {"fromDefinition": "metadata.labels['team']"}],
            "validity": "24h",
        }));
        let (authority, typed) = desired_for(&g, &tcp("prod", json!({"team": "red"}))).unwrap();
        let authority = serde_json::to_value(authority.unwrap()).unwrap();
        let kubeconfig = serde_json::to_value(&typed).unwrap();
        assert_eq!(authority["metadata"]["name"], "prod-tenant");
        assert_eq!(
            authority["spec"]["signer"]["caSecretRef"]["name"],
            "prod-ca"
        );
        assert_eq!(
            authority["spec"]["target"]["kubeconfigSecretRef"],
            json!({"name": "prod-admin-kubeconfig", "key": "admin.svc"})
        );
        assert_eq!(kubeconfig["metadata"]["namespace"], "alpha");
        assert_eq!(kubeconfig["metadata"]["ownerReferences"][0]["uid"], "g-uid");
        assert_eq!(kubeconfig["spec"]["username"], "prod");
        assert_eq!(
            kubeconfig["spec"]["groups"],
            json!(["customer-admins", "red"])
        );
        assert_eq!(kubeconfig["spec"]["authorityRef"]["name"], "prod-tenant");
        // What the API server would return (the JSON read back) compares equal: nothing is
        // rewritten on the next pass.
        let kc: Kubeconfig = serde_json::from_value(kubeconfig.clone()).unwrap();
        assert!(same(
            &kc.spec,
            &typed.spec,
            &BTreeMap::from([(GENERATOR_LABEL.to_string(), "tenant".to_string())]),
            &g
        ));

        // A missing field is an error for that object alone.
        let err = desired_for(&g, &tcp("prod", json!({}))).unwrap_err();
        assert!(
            err.starts_with("groups: field metadata.labels['team'] does not exist"),
            "{err}"
        );
        // A Cluster API Cluster (any version) gets one too, from its own Secrets.
        let g = generator(json!({
            "target": {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster"},
            "user": {"fromDefinition": "metadata.name"}, "validity": "1h",
        }));
        let (authority, _) = desired_for(&g, &tcp("prod", json!({}))).unwrap();
        let authority = serde_json::to_value(authority.unwrap()).unwrap();
        assert_eq!(
            authority["spec"]["signer"]["caSecretRef"]["name"],
            "prod-ca"
        );
        assert_eq!(
            authority["spec"]["target"]["kubeconfigSecretRef"],
            json!({"name": "prod-kubeconfig", "key": "value"})
        );
        // Other kinds need an authority; names come from the template.
        let g = generator(json!({
            "target": {"apiVersion": "v1", "kind": "ConfigMap"},
            "authorityRef": {"kind": "ClusterAuthority", "name": "ca"},
            "user": {"stringValue": "bot"}, "validity": "1h", "secretName": "kc-{object}",
        }));
        let (authority, typed) = desired_for(&g, &tcp("prod", json!({}))).unwrap();
        let kubeconfig = serde_json::to_value(&typed).unwrap();
        assert!(authority.is_none());
        assert_eq!(kubeconfig["metadata"]["name"], "kc-prod");
        assert_eq!(
            kubeconfig["spec"]["authorityRef"]["kind"],
            "ClusterAuthority"
        );
        let bad = generator(
            json!({"user": {"stringValue": "x"}, "validity": "1h", "secretName": "{object}_x"}),
        );
        assert!(
            desired_for(&bad, &tcp("prod", json!({})))
                .unwrap_err()
                .contains("not a valid Secret name")
        );
    }

    #[test]
    fn status_counts_and_names_errors() {
        let g = generator(json!({"user": {"stringValue": "x"}, "validity": "1h"}));
        let s = status(&g, 3, 3, vec![]);
        assert_eq!(
            (
                s.resources,
                s.available_resources,
                s.conditions[0].status.as_str()
            ),
            (3, 3, "True")
        );
        let s = status(
            &g,
            3,
            2,
            vec![GeneratorError {
                resource: "a/b".into(),
                message: "CASecretInvalid: x".into(),
            }],
        );
        assert_eq!(s.conditions[0].reason, "Errors");
        assert_eq!(s.errors.len(), 1);
    }
}
