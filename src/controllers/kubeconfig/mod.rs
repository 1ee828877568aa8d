//! The Kubeconfig controller. One reconcile reads top to bottom in [`apply`]:
//!
//! 1. observe: the authority and the namespace from the caches ([`resolve::find`]), the policy
//!    ([`policy::check`]), the CA and bundles ([`resolve::load`]), the spec read once
//!    ([`request::Desired`]);
//! 2. decide and write the credential with its bindings ([`write::apply_secret`]: the Secret
//!    plan is [`secret::plan_secret`], the bindings plan [`bindings::plan_bindings`]), or
//!    withdraw both ([`write::withdraw`]) unless only renewal is blocked
//!    ([`status::still_valid`]);
//! 3. the copies ([`copies`]);
//! 4. report: the status ([`status::status`]), a Warning event on a new problem, and the next
//!    look ([`status::requeue_for`]; a Ready one waits in [`renewals`]).
//!
//! Bindings, Roles, tokens and CSRs go to the cluster of the authority's target, if it names
//! one ([`targets`]), else to the controller's own.
//!
//! Pure files: `request`, `policy`, `secret`, `bindings`, `copies` (its plan), `status`. I/O
//! files: `resolve`, `issue`, `write`, `orphans`, `targets`, `context`.

pub mod argocd;
pub mod bindings;
pub mod context;
pub mod copies;
pub mod dependents;
pub mod distribute;
#[cfg(test)]
mod fixtures;
pub mod issue;
pub mod keys;
pub mod orphans;
pub mod own_status;
pub mod policy;
pub mod renewals;
pub mod request;
pub mod resolve;
pub mod secret;
pub mod status;
pub mod targets;
pub mod write;

use std::sync::Arc;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{Instrument, debug};

use crate::{
    api::{FINALIZER, Kubeconfig},
    client,
    model::{Error, Result},
};

pub use context::Context;

/// Entry point. With a finalizer (see [`request::needs_finalizer`]) the finalizer helper adds it
/// first and runs [`write::cleanup`] on deletion; without one, a deleted object is left to the garbage
/// collector, and a plain issuance costs one write fewer.
pub async fn reconcile(kc: Arc<Kubeconfig>, ctx: Arc<Context>) -> Result<Action> {
    let name = format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any());
    match tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_once(kc, ctx)).await {
        Ok(Err(busy @ Error::TargetBusy(_))) => {
            debug!(kubeconfig = %name, "{busy}; tried again soon");
            Ok(Action::requeue(busy.retry_after()))
        }
        Ok(result) => result,
        Err(_) => Err(Error::TimedOut(format!(
            "reconciling {name} took longer than {}s; tried again",
            RECONCILE_TIMEOUT.as_secs()
        ))),
    }
}

/// The longest one reconcile may take, a defence: whatever it waits on (a request the API
/// server never answers, a connection half-closed by a restart), it is cut then and retried,
/// and never holds one of the `--concurrency` slots for good.
pub const RECONCILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn reconcile_once(kc: Arc<Kubeconfig>, ctx: Arc<Context>) -> Result<Action> {
    // Decided from the status last written, even before the watch brings it.
    let kc = ctx.own_status.latest(kc);
    let namespace = kc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api = Api::<Kubeconfig>::namespaced(ctx.client.clone(), &namespace);
    let span =
        tracing::info_span!("reconcile", kubeconfig = %format!("{namespace}/{}", kc.name_any()));
    let _timer = crate::metrics::ReconcileTimer::start(&ctx.metrics);
    let has_finalizer = kc.finalizers().iter().any(|f| f == FINALIZER);
    // Whether its authority (in the cache) binds in a target cluster.
    let remote = matches!(resolve::find(&kc, &ctx)?, Ok(found) if found.config.target.is_some());
    if !has_finalizer && !request::needs_finalizer(&kc, remote) {
        if kc.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return apply(kc, &ctx).instrument(span).await;
    }
    let result = finalizer(&api, FINALIZER, kc, |event| async {
        match event {
            FinalizerEvent::Apply(kc) => {
                let action = apply(kc.clone(), &ctx).await?;
                if request::needs_finalizer(&kc, remote) {
                    return Ok(action);
                }
                // Nothing outside the garbage collector's reach is left (this apply removed
                // it): the finalizer goes.
                let live = api
                    .get_opt(&kc.name_any())
                    .await
                    .map_err(Error::kube("reading the Kubeconfig"))?;
                if let Some(live) = live.filter(|l| !request::needs_finalizer(l, remote) && l.uid() == kc.uid()) {
                    let rest: Vec<&String> =
                        live.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": live.resource_version()}});
                    api.patch(&live.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(Error::kube("removing the finalizer"))?;
                }
                Ok(action)
            }
            FinalizerEvent::Cleanup(kc) => write::cleanup(kc, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    client::finalizer_outcome(result)
}

/// One pass over a Kubeconfig, top to bottom.
async fn apply(kc: Arc<Kubeconfig>, ctx: &Context) -> Result<Action> {
    let uid = kc.uid().ok_or(Error::MissingMetadata("uid"))?;
    ctx.caches_ready().await;
    let now = OffsetDateTime::now_utc();
    // 1. The authority, its policy, its CA and the spec, read once; nothing is written before.
    let (prepared, allowed) = resolve::prepare(&kc, &uid, ctx).await?;
    // The cluster of the bindings: the controller's, or the authority's target.
    let target = write::target_of(&kc, &prepared);
    // A cluster the bindings left (the authority or its target changed) is cleaned first.
    if let Some(problem) = write::leave_previous(&kc, &uid, target.as_ref(), ctx).await? {
        let previous = kc.status.as_ref().and_then(|s| s.target.as_deref());
        let outcome = status::Outcome::NotReady(problem);
        let outputs = status::Outputs::default();
        write::report(&kc, &outcome, &outputs, previous, ctx, now).await?;
        return Ok(next(&kc, &outcome, &outputs, ctx));
    }
    let cluster = write::cluster(target.as_ref(), ctx).await?;
    // 2. The credential and its bindings, together or not at all.
    let (outcome, data) = write::credential(&kc, &uid, prepared, cluster, ctx, now).await?;
    write::remove_renamed(&kc, &uid, ctx).await?;
    // 3. The copies and the Argo CD cluster Secret of a Secret that holds a valid
    // credential; none otherwise.
    let (distributed, registered) =
        write::outputs(&kc, &uid, &outcome, data, &allowed, ctx).await?;
    // 4. The status, and a Warning event when a problem is new.
    let outputs = status::Outputs {
        distributed: distributed.as_ref(),
        registered: registered.as_ref(),
    };
    write::report(&kc, &outcome, &outputs, target.as_ref(), ctx, now).await?;
    Ok(next(&kc, &outcome, &outputs, ctx))
}

/// The next look at a Kubeconfig after `outcome`: a Ready one waits in [`renewals`].
fn next(
    kc: &Kubeconfig,
    outcome: &status::Outcome,
    outputs: &status::Outputs<'_>,
    ctx: &Context,
) -> Action {
    match status::requeue_for(outcome, outputs) {
        status::Next::Renewal(wait) => {
            ctx.renewals.after(kc, wait);
            Action::await_change()
        }
        status::Next::Retry(wait) => {
            ctx.renewals.forget(kc);
            Action::requeue(wait)
        }
    }
}
