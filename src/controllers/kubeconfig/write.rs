//! Applying the plans: the Secret and its credential, the bindings, the withdrawal of both, and
//! the cleanup at deletion.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    certificates::v1::CertificateSigningRequest,
    core::v1::Secret,
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use kubeconfig_authority_pki::renewal_time;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{
    Context,
    argocd::Registered,
    bindings::plan_bindings,
    copies::{self, Distributed},
    issue,
    request::{Credential, Desired},
    resolve::Outputs,
    secret::{
        SecretData, SecretPlan, WriteReason, build_secret, first_key, leaves_out, plan_secret,
    },
    status::{self, Outcome},
    targets::Claim,
};
use crate::{
    api::{FIELD_MANAGER, KUBECONFIG_UID_LABEL, KeyRef, Kubeconfig, ORPHAN_TARGET_ANNOTATION},
    client::{self, cluster::Cluster},
    model::{
        Error, Problem, Reason, Result, Written,
        authority::{Resolved, ResolvedSigner},
        managed::ManagedSecret,
        to_time,
    },
};

/// Where a Kubeconfig's bindings are: the target its authority names (`prepared`), or when
/// that cannot be known, the one its status recorded; `None` for the controller's cluster.
pub fn target_of(
    kc: &Kubeconfig,
    prepared: &Result<(Resolved, Desired), Problem>,
) -> Option<KeyRef> {
    match prepared {
        Ok((resolved, _)) => resolved.target.clone(),
        Err(_) => kc
            .status
            .as_ref()
            .and_then(|s| s.target.as_deref().cloned()),
    }
}

/// The cluster of `target` (the controller's own for `None`); `Ok(Err(problem))` when a target
/// cannot be used now.
pub async fn cluster(target: Option<&KeyRef>, ctx: &Context) -> Result<Result<Claim, Problem>> {
    match target {
        None => Ok(Ok(Claim::local(ctx.local.clone()))),
        Some(key) => ctx.targets.cluster(key, ctx).await,
    }
}

/// The credential and its bindings, together or not at all: issued (or kept) with its
/// bindings in place, or, when something stops it, withdrawn with them. When the authority
/// cannot sign just now, a valid credential for the spec as it is stays (Ready,
/// `RenewalBlocked`) until it expires; so it does while its target cannot be reached (its
/// bindings there can be neither checked nor removed).
pub async fn credential(
    kc: &Kubeconfig,
    uid: &str,
    prepared: Result<(Resolved, Desired), Problem>,
    cluster: Result<Claim, Problem>,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<(Outcome, Option<SecretData>)> {
    let prepared = match (prepared, &cluster) {
        (Ok(_), Err(problem)) => Err(problem.clone()),
        (prepared, _) => prepared,
    };
    let (outcome, data) = match (&prepared, &cluster) {
        (Ok((resolved, desired)), Ok(cluster)) => {
            apply_secret(kc, uid, desired, resolved, cluster, ctx, now).await?
        }
        (Err(problem), _) | (_, Err(problem)) => (Outcome::NotReady(problem.clone()), None),
    };
    let Outcome::NotReady(problem) = outcome else {
        return Ok((outcome, data));
    };
    let namespace = kc.namespace().unwrap_or_default();
    let cached = ctx.secrets.get(&namespace, &kc.spec.secret_ref.name);
    let cluster = cluster.ok();
    match status::still_valid(kc, uid, problem, cached.as_deref(), now) {
        Ok(kept) => {
            let Some(cluster) = cluster else {
                return Ok((kept, None));
            };
            match apply_bindings(kc, uid, true, &cluster, ctx).await? {
                None => Ok((kept, None)),
                Some(problem) => {
                    withdraw(kc, uid, Some(&cluster), ctx).await?;
                    Ok((Outcome::NotReady(problem), None))
                }
            }
        }
        Err(problem) => {
            withdraw(kc, uid, cluster.as_deref(), ctx).await?;
            Ok((Outcome::NotReady(problem), None))
        }
    }
}

/// What the Secret's data is handed to: its copies and its Argo CD cluster Secret, from the
/// data when the credential is Ready (read live when the cache, which keeps no data,
/// answered), none otherwise.
pub async fn outputs(
    kc: &Kubeconfig,
    uid: &str,
    outcome: &Outcome,
    data: Option<SecretData>,
    allowed: &Outputs,
    ctx: &Context,
) -> Result<(Option<Distributed>, Option<Registered>)> {
    let namespace = kc.namespace().unwrap_or_default();
    let primary = match (outcome, data) {
        (Outcome::Ready { .. }, Some(data)) => Some(data),
        (Outcome::Ready { .. }, None)
            if kc.spec.distribution.is_some() || kc.spec.argo_cd.is_some() =>
        {
            Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&kc.spec.secret_ref.name)
                .await
                .map_err(Error::kube("reading the Secret"))?
                .and_then(|s| s.data)
        }
        _ => None,
    };
    let subject = copies::subject(kc, uid);
    let distributed = super::distribute::apply_copies(
        kc,
        uid,
        primary.as_ref().zip(subject.as_ref()),
        allowed.copies.as_ref(),
        ctx,
    )
    .await?;
    // The kubeconfig of the Secret: under the first of its keys.
    let text = primary.as_ref().and_then(|data| {
        let keys = kc.spec.secret_ref.kubeconfig_keys.as_deref();
        let key = keys
            .and_then(|k| k.first())
            .map_or(super::request::DEFAULT_KUBECONFIG_KEYS[0], String::as_str);
        data.get(key)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .map(str::to_owned)
    });
    let registered =
        super::argocd::apply(kc, uid, text.as_deref(), allowed.argo_cd.as_ref(), ctx).await?;
    Ok((distributed, registered))
}

/// Writes the status when it changed, and reports a new problem (log, metric, Warning event)
/// once per change.
pub async fn report(
    kc: &Kubeconfig,
    outcome: &Outcome,
    outputs: &status::Outputs<'_>,
    target: Option<&KeyRef>,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<()> {
    let namespace = kc.namespace().unwrap_or_default();
    let name = kc.name_any();
    // `kc` carries the status this controller last wrote even before the watch brings it back
    // (`own_status`): an unchanged status is not written again, and nothing is read first.
    let new_status = status::status(kc, outcome, outputs, target, now);
    if kc.status.as_ref() == Some(&new_status) {
        return Ok(());
    }
    // Serialized as it is, not through a JSON value first.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusPatch<'a> {
        api_version: &'a str,
        kind: &'a str,
        status: &'a crate::api::KubeconfigStatus,
    }
    let patch = StatusPatch {
        api_version: &Kubeconfig::api_version(&()),
        kind: &Kubeconfig::kind(&()),
        status: &new_status,
    };
    let written = client::apply_status::<Kubeconfig>(&ctx.client, Some(&namespace), &name, &patch)
        .await
        .map_err(Error::kube("updating status"))?;
    if let Some(uid) = kc.uid() {
        ctx.own_status.record(&uid, new_status, written);
    }
    if let Outcome::NotReady(problem) = outcome {
        warn!(reason = %problem.reason, "{}", problem.message);
        crate::metrics::Metrics::count(&ctx.metrics.failures, problem.reason.as_str());
        ctx.publish(
            kc,
            EventType::Warning,
            problem.reason,
            &problem.message,
            "Reconcile",
        )
        .await;
    }
    Ok(())
}

pub async fn apply_secret(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    resolved: &Resolved,
    cluster: &Cluster,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<(Outcome, Option<SecretData>)> {
    let namespace = kc.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let cached = ctx.secrets.get(&namespace, &desired.secret_name);
    // A Secret that neither cache has seen is almost always not there yet. A certificate
    // signed here (nothing asked of an API server) is then written without a read first, by a
    // create that leaves an existing Secret alone; only if one is there after all is it read
    // and the plan made again.
    let mut create_only = cached.is_none()
        && ctx
            .secret_metadata
            .get(&ObjectRef::new(&desired.secret_name).within(&namespace))
            .is_none()
        && matches!(resolved.signer, ResolvedSigner::Ca(_));
    loop {
        let (plan, mut live) = if create_only {
            (plan_secret(desired, uid, None, now), None)
        } else {
            observe_secret(desired, uid, cached.as_deref(), &secrets, now).await?
        };
        let ready_message = format!("Secret {} holds a valid kubeconfig", desired.secret_name);
        let (reason, why) = match plan {
            SecretPlan::Keep { held, renew_at } => {
                if let Some(problem) = apply_bindings(kc, uid, true, cluster, ctx).await? {
                    return Ok((Outcome::NotReady(problem), None));
                }
                let outcome = Outcome::Ready {
                    held,
                    renew_at,
                    written: None,
                    message: ready_message,
                    blocked: None,
                };
                return Ok((outcome, live.and_then(|l| l.data)));
            }
            SecretPlan::Conflict(problem) => return Ok((Outcome::NotReady(problem), None)),
            SecretPlan::Write(reason, why) => (reason, why),
            SecretPlan::ReplaceCopy(owner) => {
                // Deleted first: the deletion brings the distributing Kubeconfig back, which then
                // sees the name claimed here.
                client::delete_ignoring_absent(secrets.clone(), &desired.secret_name).await?;
                live = None;
                (
                    WriteReason::Issue,
                    format!(
                        "the copy Kubeconfig {owner} had distributed under that name was removed"
                    ),
                )
            }
        };
        // A CSR in flight took its write from the budget when it was made: looking again whether
        // it was signed writes nothing (spending on each look stopped a slow signer's certificate
        // for a minute after five looks).
        let waiting = ctx.pending_csrs.lock().is_ok_and(|p| p.contains_key(uid));
        if !waiting {
            ctx.spend(uid, Written::Secret)?;
        }
        let mut issued = match issue::issue(kc, uid, desired, resolved, cluster, ctx, now).await? {
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
        if let Some(problem) = apply_bindings(kc, uid, true, cluster, ctx).await? {
            return Ok((Outcome::NotReady(problem), None));
        }
        // A Secret this controller created (a plain create, `client::create`) has its fields
        // owned by an update, which an apply that leaves one out would not remove: they are
        // made applied ones first, once in the Secret's life, and only when something goes.
        if let Some(patch) = live
            .as_ref()
            .filter(|live| leaves_out(live, &secret))
            .and_then(|live| client::adoption_patch(&live.metadata, to_time(now)))
        {
            ctx.spend(uid, Written::Secret)?;
            ctx.adopt_managed_secret(&namespace, &desired.secret_name, &patch)
                .await
                .map_err(Error::kube(format!(
                    "taking over the fields of Secret {}",
                    desired.secret_name
                )))?;
        }
        let written = if create_only {
            ctx.create_managed_secret(&namespace, &secret).await
        } else {
            ctx.write_managed_secret(&namespace, &secret)
                .await
                .map(|()| true)
        }
        .map_err(Error::kube(format!(
            "writing Secret {}",
            desired.secret_name
        )))?;
        if !written {
            // A Secret was there after all: what was signed is dropped, never handed out.
            create_only = false;
            continue;
        }
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
            reason.reason().as_str(),
            held.not_after,
            desired.secret_name
        );
        info!(reason = reason.reason().as_str(), id = %held.id, "{message}");
        crate::metrics::Metrics::count(&ctx.metrics.issued, reason.reason().as_str());
        ctx.publish(kc, EventType::Normal, reason.reason(), &message, "Issue")
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
        return Ok((outcome, secret.data));
    }
}

/// The plan for a Secret, from the cache when it says nothing is to be written, else from the
/// live object: the cache can lag behind our own last write, and nothing is issued twice.
/// The live Secret comes with it when it was read.
async fn observe_secret(
    desired: &Desired,
    uid: &str,
    cached: Option<&ManagedSecret>,
    secrets: &Api<Secret>,
    now: OffsetDateTime,
) -> Result<(SecretPlan, Option<Secret>)> {
    if let Some(plan) = cached.map(|c| plan_secret(desired, uid, Some(c), now))
        && !matches!(plan, SecretPlan::Write(..) | SecretPlan::ReplaceCopy(_))
    {
        return Ok((plan, None));
    }
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
    Ok((plan, live))
}

/// When the cluster of a Kubeconfig's bindings changed since the last reconcile (its authority,
/// or the authority's target, did: `target` against the status's), removes what it made in the
/// previous one first: the bindings and Roles there, and in a previous target its CSRs and the
/// token anchors (which revokes the tokens bound to them). `Some(problem)` while a previous
/// target cannot be reached: nothing else is done until it can, or until an admin gives it up
/// with [`ORPHAN_TARGET_ANNOTATION`], as for a deletion.
pub async fn leave_previous(
    kc: &Kubeconfig,
    uid: &str,
    target: Option<&KeyRef>,
    ctx: &Context,
) -> Result<Option<Problem>> {
    // Never reported: nothing was made anywhere.
    let Some(status) = kc.status.as_ref() else {
        return Ok(None);
    };
    let previous = status.target.as_deref();
    if previous == target {
        return Ok(None);
    }
    let Some(key) = previous else {
        // The controller's own cluster: its copies and Secret stay, its bindings go.
        info!("the authority now binds in a target cluster: removing the bindings made here");
        return apply_bindings(kc, uid, false, &ctx.local, ctx).await;
    };
    info!(target_cluster = %key.name, "the Kubeconfig binds elsewhere now: its previous target cluster is cleaned first");
    Ok(clean_target(kc, uid, key, ctx).await?.map(|problem| {
        Problem::new(
            problem.reason,
            format!(
                "the Kubeconfig no longer binds in the target of Secret {}/{}, and what it made there goes first: {} (to give that target up, an admin annotates this Kubeconfig {ORPHAN_TARGET_ANNOTATION}=true)",
                key.namespace.as_deref().unwrap_or_default(),
                key.name,
                problem.message
            ),
        )
    }))
}

/// Removes everything labelled with the Kubeconfig's UID in the target cluster `key`, unless an
/// admin gave that target up ([`ORPHAN_TARGET_ANNOTATION`]); `Some(problem)` while it cannot
/// be reached.
async fn clean_target(
    kc: &Kubeconfig,
    uid: &str,
    key: &KeyRef,
    ctx: &Context,
) -> Result<Option<Problem>> {
    if orphaned(kc) {
        warn!(target_cluster = %key.name, "{ORPHAN_TARGET_ANNOTATION}: what was made in the target cluster is left there");
        return Ok(None);
    }
    match ctx.targets.cluster(key, ctx).await? {
        Ok(cluster) => {
            remove_labelled(&cluster.client, &labelled(uid), None).await?;
            Ok(None)
        }
        Err(problem) => Ok(Some(problem)),
    }
}

/// Deletes the Secrets a Kubeconfig wrote under a name its spec no longer gives (its
/// `spec.secretRef.name` changed): their credentials go with them, and the tokens bound to them
/// are revoked.
pub async fn remove_renamed(kc: &Kubeconfig, uid: &str, ctx: &Context) -> Result<()> {
    let namespace = kc.namespace().unwrap_or_default();
    let name = &kc.spec.secret_ref.name;
    let former = ctx.secrets_of(uid, |s| {
        s.namespace == namespace
            && s.name != *name
            && !s.argo_cd
            && crate::model::managed::is_uid(s.controller_uid, uid)
    });
    for secret in former {
        ctx.spend(uid, Written::Secret)?;
        info!(secret = %secret.name, "removing the Secret of a former spec.secretRef.name");
        client::delete_ignoring_absent(
            Api::<Secret>::namespaced(ctx.client.clone(), &namespace),
            &secret.name,
        )
        .await?;
    }
    Ok(())
}

/// Whether an admin gave up on the Kubeconfig's target cluster.
fn orphaned(kc: &Kubeconfig) -> bool {
    kc.annotations()
        .get(ORPHAN_TARGET_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Everything labelled with a Kubeconfig's UID.
fn labelled(uid: &str) -> ListParams {
    ListParams::default().labels(&format!("{KUBECONFIG_UID_LABEL}={uid}"))
}

/// Removes what a Kubeconfig that is not Ready must not hold: its bindings (in `cluster`,
/// unless it cannot be reached) and its own Secret (copies go with distribution). A Secret it
/// does not own is left alone.
pub async fn withdraw(
    kc: &Kubeconfig,
    uid: &str,
    cluster: Option<&Cluster>,
    ctx: &Context,
) -> Result<()> {
    if let Some(cluster) = cluster {
        apply_bindings(kc, uid, false, cluster, ctx).await?;
    }
    let namespace = kc.namespace().unwrap_or_default();
    let name = &kc.spec.secret_ref.name;
    let ours = ctx
        .secrets
        .get(&namespace, name)
        .is_some_and(|s| crate::model::managed::is_uid(s.controller_uid, uid));
    if ours {
        info!(secret = %name, "removing the Secret of a Kubeconfig that is not Ready");
        client::delete_ignoring_absent(
            Api::<Secret>::namespaced(ctx.client.clone(), &namespace),
            name,
        )
        .await?;
    }
    Ok(())
}

/// Brings the bindings in line with the spec (or removes them all when `allowed` is false). A
/// refusal by the API server (for example the controller may not bind that role) is a problem
/// to report, not a crash.
pub async fn apply_bindings(
    kc: &Kubeconfig,
    uid: &str,
    allowed: bool,
    cluster: &Cluster,
    ctx: &Context,
) -> Result<Option<Problem>> {
    let mine = |labels: &BTreeMap<String, String>| {
        labels.get(KUBECONFIG_UID_LABEL).map(String::as_str) == Some(uid)
    };
    let observed_cluster = cluster
        .cluster_role_bindings
        .state_filter(|b| mine(b.labels()));
    let observed_namespaced = cluster.role_bindings.state_filter(|b| mine(b.labels()));
    let observed_roles = cluster.roles.state_filter(|b| mine(b.labels()));
    let client = &cluster.client;
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
        if let Err(e) = Api::<Role>::namespaced(client.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(r))
            .await
        {
            failures.push(binding_failure(&format!("Role {ns}/{name}"), e)?);
        }
    }
    for b in &plan.apply_cluster {
        let name = b.name_any();
        if let Err(e) = Api::<ClusterRoleBinding>::all(client.clone())
            .patch(&name, &params, &Patch::Apply(b))
            .await
        {
            failures.push(binding_failure(&format!("ClusterRoleBinding {name}"), e)?);
        }
    }
    for b in &plan.apply_namespaced {
        let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
        if let Err(e) = Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(b))
            .await
        {
            failures.push(binding_failure(&format!("RoleBinding {ns}/{name}"), e)?);
        }
    }
    for name in &plan.delete_cluster {
        client::delete_ignoring_absent(Api::<ClusterRoleBinding>::all(client.clone()), name)
            .await?;
    }
    for (ns, name) in &plan.delete_namespaced {
        client::delete_ignoring_absent(Api::<RoleBinding>::namespaced(client.clone(), ns), name)
            .await?;
    }
    for (ns, name) in &plan.delete_roles {
        client::delete_ignoring_absent(Api::<Role>::namespaced(client.clone(), ns), name).await?;
    }
    Ok((!failures.is_empty()).then(|| Problem::new(Reason::RBACFailed, failures.join("; "))))
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

/// Runs before the object goes: every binding, Role, CSR and copy carrying its UID, then its
/// Secret (if it is ours).
pub async fn cleanup(kc: Arc<Kubeconfig>, ctx: &Context) -> Result<Action> {
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = kc.uid().ok_or(Error::MissingMetadata("uid"))?;
    let selector = labelled(&uid);
    // CSRs still waiting (a signed one is deleted when its certificate is taken).
    if let Ok(mut pending) = ctx.pending_csrs.lock() {
        pending.remove(&uid);
    }
    // In the target first: everything made there goes before the finalizer does, unless an
    // admin gives the target up.
    if let Some(key) = kc.status.as_ref().and_then(|s| s.target.as_deref())
        && let Some(problem) = clean_target(&kc, &uid, key, ctx).await?
    {
        let message = format!(
            "{}; the deletion waits for it (to give the target up, an admin annotates this Kubeconfig {ORPHAN_TARGET_ANNOTATION}=true)",
            problem.message
        );
        let outcome = Outcome::NotReady(Problem::new(problem.reason, message.clone()));
        report(
            &kc,
            &outcome,
            &status::Outputs::default(),
            Some(key),
            ctx,
            OffsetDateTime::now_utc(),
        )
        .await?;
        return Err(Error::TargetUnreachable(message));
    }
    // In the controller's cluster (where the Secret and its copies are).
    remove_labelled(&ctx.client, &selector, Some(&namespace)).await?;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let secret_name = &kc.spec.secret_ref.name;
    let secret = secrets
        .get_metadata_opt(secret_name)
        .await
        .map_err(Error::kube("reading the Secret"))?;
    if secret.is_some_and(|s| s.owner_references().iter().any(|o| o.uid == uid)) {
        client::delete_ignoring_absent(secrets, secret_name).await?;
    }
    info!("removed the bindings and the Secret");
    Ok(Action::await_change())
}

/// Deletes the bindings, Roles, CSRs and Secrets labelled with a Kubeconfig's UID (`selector`)
/// in one cluster; in the Kubeconfig's own `namespace` the Secret is left (it is checked
/// apart: a Secret of that name may not be ours).
async fn remove_labelled(
    client: &Client,
    selector: &ListParams,
    namespace: Option<&str>,
) -> Result<()> {
    let none = |_: &str| false;
    let within = |ns: Option<String>| ns.unwrap_or_default();
    client::delete_labelled(
        client,
        selector,
        |_| Api::<ClusterRoleBinding>::all(client.clone()),
        none,
    )
    .await?;
    client::delete_labelled(
        client,
        selector,
        |ns| Api::<RoleBinding>::namespaced(client.clone(), &within(ns)),
        none,
    )
    .await?;
    client::delete_labelled(
        client,
        selector,
        |ns| Api::<Role>::namespaced(client.clone(), &within(ns)),
        none,
    )
    .await?;
    client::delete_labelled(
        client,
        selector,
        |_| Api::<CertificateSigningRequest>::all(client.clone()),
        none,
    )
    .await?;
    // Copies in other namespaces (spec.distribution), or a target's token anchors.
    client::delete_labelled(
        client,
        selector,
        |ns| Api::<Secret>::namespaced(client.clone(), &within(ns)),
        |ns| Some(ns) == namespace,
    )
    .await
}
