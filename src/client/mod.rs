//! Thin helpers over the API client that the controllers share: deletes that ignore absence,
//! applies and creates whose answers are read for their resourceVersion only ([`written`]),
//! events, waiting for a cache, the finalizer's outcome, and watches that recover from every
//! fault ([`watch`]).

pub mod cluster;
pub mod connect;
pub mod watch;

pub use watch::filled;

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, MicroTime, ObjectMeta, Time,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::{EventType, Reporter},
    },
};
use tracing::warn;

use crate::{
    api::FIELD_MANAGER,
    model::{Error, Result},
};

/// The longest wait for the headers of any answer of an API server (a watch's events stream
/// on): a request left hanging by an API server that went away fails and is retried instead of
/// waiting for the client's 295 s read timeout.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Applies an object's status (server-side apply, the controller's field manager). The API
/// server is asked to answer with the metadata only (the whole object would be decoded for
/// nothing), and only its resourceVersion is read: the one the write made.
pub async fn apply_status<K>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    patch: &impl serde::Serialize,
) -> kube::Result<Option<String>>
where
    K: Resource<DynamicType = ()>,
{
    let request = kube::core::Request::new(K::url_path(&(), namespace))
        .patch_subresource(
            "status",
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    written(client, request).await
}

/// Applies an object (server-side apply, the controller's field manager, forced), answered
/// with the resourceVersion the write made (see [`written`]).
pub async fn apply<K>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    object: &K,
) -> kube::Result<Option<String>>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let request = kube::core::Request::new(K::url_path(&(), namespace))
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .map_err(kube::Error::BuildRequest)?;
    written(client, request).await
}

/// Sends a write asking the API server to answer with the object's metadata only, and reads
/// only the resourceVersion of the answer. A server-side apply fills `managedFields`, often
/// the larger part of the metadata: decoding it after the status and Secret writes was 2.6% of
/// the controller's CPU samples during a batch of 10,000 (`perf record`), and the whole event
/// kube-runtime's `Recorder` decoded after each publish another 1.5%.
async fn written(
    client: &Client,
    mut request: http::Request<Vec<u8>>,
) -> kube::Result<Option<String>> {
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    client
        .request::<Written>(request)
        .await
        .map(|written| written.metadata.resource_version)
}

/// What is read of the answer to a write: every other field is skipped unread.
#[derive(serde::Deserialize)]
struct Written {
    metadata: WrittenMetadata,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrittenMetadata {
    resource_version: Option<String>,
}

/// Creates an object by the controller's field manager (a POST), answered with the
/// resourceVersion of the object made (see [`written`]); `Ok(None)` when one of that name
/// exists, which is left untouched. Saves the read that would otherwise have to come first, and
/// costs the API server less than an apply that creates (6-10% of its CPU per Kubeconfig in the
/// bench's floor: an apply is merged field by field). The fields it writes are owned by an
/// `Update` of the field manager, which a later apply never removes: [`adoption_patch`] makes
/// them applied ones before an apply that leaves one out.
pub async fn create<K>(
    client: &Client,
    namespace: Option<&str>,
    object: &K,
) -> kube::Result<Option<Option<String>>>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let request = kube::core::Request::new(K::url_path(&(), namespace))
        .create(&params, body)
        .map_err(kube::Error::BuildRequest)?;
    match written(client, request).await {
        Ok(version) => Ok(Some(version)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The JSON merge patch that makes the fields an `Update` of the controller's field manager
/// owns (those of a [`create`]) fields it applied, merged into its applied ones if it has any:
/// what `kubectl` does when it moves an object from client-side to server-side apply
/// (client-go's `csaupgrade`). A later apply then removes a field it leaves out, as if the object
/// had been created by an apply. The patch changes nothing else (so the API server records no
/// new owner for it), and the object's resourceVersion is its precondition. `None` when no such
/// `Update` entry is there. Pure.
pub fn adoption_patch(meta: &ObjectMeta, now: Time) -> Option<serde_json::Value> {
    let entries = meta.managed_fields.as_deref().unwrap_or_default();
    let ours = |e: &&ManagedFieldsEntry| {
        e.manager.as_deref() == Some(FIELD_MANAGER)
            && e.subresource.is_none()
            && matches!(e.operation.as_deref(), Some("Update" | "Apply"))
    };
    let (ours, others): (Vec<_>, Vec<_>) = entries.iter().partition(ours);
    if !ours
        .iter()
        .any(|e| e.operation.as_deref() == Some("Update"))
    {
        return None;
    }
    let mut fields = serde_json::Value::Object(serde_json::Map::new());
    for set in ours.iter().filter_map(|e| e.fields_v1.as_ref()) {
        union(&mut fields, &set.0);
    }
    let applied = ManagedFieldsEntry {
        api_version: ours.iter().find_map(|e| e.api_version.clone()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        manager: Some(FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        subresource: None,
        time: Some(now),
    };
    let mut adopted: Vec<_> = others.into_iter().cloned().collect();
    adopted.push(applied);
    Some(serde_json::json!({"metadata": {
        "resourceVersion": meta.resource_version,
        "managedFields": adopted,
    }}))
}

/// Adds the field set `other` to `into` (both as `managedFields` encode them: a tree of
/// objects whose leaves are empty objects).
fn union(into: &mut serde_json::Value, other: &serde_json::Value) {
    let (serde_json::Value::Object(into), serde_json::Value::Object(other)) = (into, other) else {
        return;
    };
    for (key, value) in other {
        match into.get_mut(key) {
            Some(existing) => union(existing, value),
            None => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Applies a JSON merge patch to an object (the controller's field manager), answered with
/// the resourceVersion the write made (see [`written`]).
pub async fn merge_patch<K>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    patch: &serde_json::Value,
) -> kube::Result<Option<String>>
where
    K: Resource<DynamicType = ()>,
{
    let request = kube::core::Request::new(K::url_path(&(), namespace))
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            },
            &Patch::Merge(patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    written(client, request).await
}

/// The `Accept` header of an answer with the object's metadata only.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Deletes an object; one that is gone already is no error.
pub async fn delete_ignoring_absent<K>(api: Api<K>, name: &str) -> Result<()>
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
pub async fn delete_labelled<K>(
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

/// Publishes one event about `regarding` (in its namespace, `default` for a cluster-scoped
/// object); a failure is logged, never fatal.
///
/// kube-runtime's `Recorder` would do it too, but it decodes the whole event the API server
/// answers with, and keeps every event of the last six minutes to count repeats, scanning them
/// all on each publish. The controllers publish once per change, never a repeat.
pub async fn publish(
    client: &Client,
    reporter: &Reporter,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let namespace = regarding.namespace.as_deref().unwrap_or("default");
    let named = regarding.name.as_deref().unwrap_or(&reporter.controller);
    let event = K8sEvent {
        metadata: kube::api::ObjectMeta {
            namespace: Some(namespace.to_string()),
            // The name kube-runtime's `Recorder` gives: unique per object and nanosecond.
            name: Some(format!("{named}.{:x}", now.as_nanosecond())),
            ..Default::default()
        },
        action: Some(action.to_string()),
        reason: Some(reason.to_string()),
        note: Some(note.to_string()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_string(),
        ),
        ..Default::default()
    };
    let created = async {
        let body = serde_json::to_vec(&event).map_err(kube::Error::SerdeError)?;
        let request = kube::core::Request::new(K8sEvent::url_path(&(), Some(namespace)))
            .create(&PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        written(client, request).await
    };
    if let Err(e) = created.await {
        warn!("could not publish an event: {e}");
    }
}

/// The outcome of kube-runtime's finalizer helper as a reconcile result. A finalizer that was
/// removed already by an earlier reconcile of the same deletion (the cache lagged) means the
/// object is gone and nothing is left to do. A finalizer patch whose test failed (422: the
/// live finalizers are not the cached ones, usually because an earlier reconcile just added
/// ours) means an event is on its way that brings the object back: no error, no retry.
/// A 422 that names causes (the object failed validation) stays an error.
pub fn finalizer_outcome(
    result: std::result::Result<Action, kube::runtime::finalizer::Error<Error>>,
) -> Result<Action> {
    use kube::runtime::finalizer::Error as FinalizerError;
    match result {
        Ok(action) => Ok(action),
        Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => Err(e),
        Err(FinalizerError::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        Err(
            FinalizerError::AddFinalizer(kube::Error::Api(status))
            | FinalizerError::RemoveFinalizer(kube::Error::Api(status)),
        ) if failed_test(&status) => Ok(Action::await_change()),
        Err(other) => Err(Error::Finalizer(other.to_string())),
    }
}

/// A JSON patch whose `test` operation failed: 422 with no object named and no causes (a
/// validation error names both; `tests/integration/kubeconfig.rs` asks the API server).
pub fn failed_test(status: &kube::core::Status) -> bool {
    status.code == 422
        && status
            .details
            .as_ref()
            .is_none_or(|d| d.name.is_empty() && d.causes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            api_version: Some("v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            ..ManagedFieldsEntry::default()
        }
    }

    fn meta(entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            resource_version: Some("42".into()),
            managed_fields: Some(entries),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_created_objects_fields_become_applied_ones_and_others_are_kept() {
        let now = crate::model::to_time(time::macros::datetime!(2026-12-07 10:00 UTC));
        let created = entry(
            FIELD_MANAGER,
            "Update",
            json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}, "f:type": {}}),
        );
        let applied = entry(
            FIELD_MANAGER,
            "Apply",
            json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:x": {}}}}),
        );
        let theirs = entry("kubectl-edit", "Update", json!({"f:data": {"f:c": {}}}));
        let patch = adoption_patch(&meta(vec![created, theirs.clone(), applied]), now.clone())
            .expect("an Update entry of ours");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let entries: Vec<ManagedFieldsEntry> =
            serde_json::from_value(patch["metadata"]["managedFields"].clone()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], theirs);
        let ours = &entries[1];
        assert_eq!(
            (ours.manager.as_deref(), ours.operation.as_deref()),
            (Some(FIELD_MANAGER), Some("Apply"))
        );
        assert_eq!(ours.time, Some(now));
        assert_eq!(ours.api_version.as_deref(), Some("v1"));
        assert_eq!(
            ours.fields_v1.as_ref().unwrap().0,
            json!({"f:data": {".": {}, "f:a": {}, "f:b": {}},
                "f:metadata": {"f:labels": {"f:x": {}}}, "f:type": {}})
        );
    }

    #[test]
    fn nothing_is_adopted_without_an_update_of_ours() {
        let now = crate::model::to_time(time::macros::datetime!(2026-12-07 10:00 UTC));
        let applied = entry(FIELD_MANAGER, "Apply", json!({"f:data": {"f:a": {}}}));
        let theirs = entry("kubectl-edit", "Update", json!({"f:data": {"f:c": {}}}));
        let mut status = entry(FIELD_MANAGER, "Update", json!({"f:status": {}}));
        status.subresource = Some("status".into());
        assert_eq!(
            adoption_patch(&meta(vec![applied, theirs, status]), now.clone()),
            None
        );
        assert_eq!(adoption_patch(&ObjectMeta::default(), now), None);
    }
}
