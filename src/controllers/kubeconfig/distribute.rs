//! Writing the copies of a Kubeconfig's Secret (`spec.distribution`): the access review of
//! each target namespace, the writes and the deletes the plan of [`super::copies`] asks for.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::{
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        core::v1::Secret,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{Api, ResourceExt, api::PostParams};

use super::{
    Context,
    copies::{self, Distributed, plan_copies, targets},
};
use crate::{
    api::Kubeconfig,
    client,
    model::{Error, Result, Written, managed::ManagedSecret},
};

/// Whether `subject` may create and update Secret `name` in `namespace`; `Some(why)` when not.
async fn review_refusal(
    ctx: &Context,
    subject: &copies::Subject,
    namespace: &str,
    name: &str,
) -> Result<Option<String>> {
    for verb in ["create", "update"] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(subject.user.clone()),
                groups: Some(subject.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.into()),
                    verb: Some(verb.into()),
                    resource: Some("secrets".into()),
                    name: Some(name.into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(ctx.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::kube(format!(
                "asking whether {} may {verb} Secrets in {namespace}",
                subject.user
            )))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            return Ok(Some(format!(
                "{namespace} ({} may not {verb} Secret {name} there itself)",
                subject.user
            )));
        }
    }
    Ok(None)
}

/// Brings the copies in line. `primary` and `subject` are set when the Kubeconfig holds a
/// valid credential; otherwise every copy goes. A Secret of the copy's name that the
/// controller did not create is never overwritten.
pub async fn apply_copies(
    kc: &Kubeconfig,
    uid: &str,
    primary: Option<(&BTreeMap<String, ByteString>, &copies::Subject)>,
    allowed_by_policy: Option<&LabelSelector>,
    ctx: &Context,
) -> Result<Option<Distributed>> {
    let own = kc.namespace().unwrap_or_default();
    // Every reconcile passes here: the cache is searched in place, only this one's copies are
    // taken out of it.
    let observed: Vec<Arc<ManagedSecret>> =
        ctx.secrets_of(uid, |s| s.namespace != own && !s.argo_cd);
    if kc.spec.distribution.is_none() && observed.is_empty() {
        return Ok(None);
    }
    let name = &kc.spec.secret_ref.name;
    let mut outcome = Distributed::default();
    let mut allowed = Vec::new();
    if let Some((_, subject)) = primary {
        let namespaces: Vec<(String, BTreeMap<String, String>)> = ctx
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let claimed: Vec<String> = ctx
            .kubeconfigs
            .state()
            .iter()
            .filter(|other| {
                other.spec.secret_ref.name == *name && other.uid().as_deref() != Some(uid)
            })
            .filter_map(|other| other.namespace())
            .collect();
        match targets(kc, allowed_by_policy, &namespaces, &claimed) {
            Ok(targets) => {
                outcome.refused = targets.refused;
                for ns in targets.allowed {
                    match review_refusal(ctx, subject, &ns, name).await? {
                        Some(why) => {
                            outcome.refused.push(why);
                            outcome.reviews_refused = true;
                        }
                        None => allowed.push(ns),
                    }
                }
            }
            Err(problem) => outcome.problem = Some(problem),
        }
    }
    let plan = plan_copies(kc, uid, primary.map(|(data, _)| data), &allowed, &observed);
    // A copy an unmanaged Secret is in the way of is not written, and takes nothing from the
    // budget: each look at such a Kubeconfig spent a write before, and five looks in a minute
    // held up its real writes (a copy to remove) for the rest of that minute.
    let mut write = Vec::new();
    for copy in plan.write {
        let ns = copy.namespace().unwrap_or_default();
        if ctx.foreign_secret(&observed, &ns, name, uid).await? {
            outcome.conflicts.push(ns);
        } else {
            write.push((ns, copy));
        }
    }
    if !write.is_empty() || !plan.delete.is_empty() {
        ctx.spend(uid, Written::Copies)?;
    }
    outcome.copies = plan.current;
    for (ns, copy) in write {
        ctx.write_managed_secret(&ns, &copy)
            .await
            .map_err(Error::kube(format!("writing the copy {ns}/{name}")))?;
        outcome.copies += 1;
    }
    for (ns, name) in plan.delete {
        client::delete_ignoring_absent(Api::<Secret>::namespaced(ctx.client.clone(), &ns), &name)
            .await?;
    }
    outcome.conflicts.sort();
    outcome.refused.sort();
    Ok(Some(outcome))
}
