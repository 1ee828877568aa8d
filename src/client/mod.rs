//! Thin helpers over the API client that the controllers share: deletes that ignore absence,
//! metadata-only status writes, events, waiting for a cache, the finalizer's outcome, and
//! watches that recover from every fault ([`watch`]).

pub mod cluster;
pub mod watch;

pub use watch::filled;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
    },
};
use serde_json::Value;
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
/// nothing): the resourceVersion the write made.
pub async fn apply_status<K>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    patch: &Value,
) -> kube::Result<Option<String>>
where
    K: Resource<DynamicType = ()>,
{
    let mut request = kube::core::Request::new(K::url_path(&(), namespace))
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
        .request::<PartialObjectMeta<K>>(request)
        .await
        .map(|written| written.metadata.resource_version)
}

/// A resourceVersion no object has: etcd's revision, which it is, would have to reach the
/// largest 64-bit signed number.
const NO_OBJECT_VERSION: &str = "9223372036854775807";

/// Creates an object by server-side apply (so that the controller's field manager owns its
/// fields, as for every later apply), but only if no object of that name exists: the applied
/// configuration names a resourceVersion no object has. The API server takes it as a
/// precondition on an object that exists (409 Conflict) and ignores it when it creates one.
/// Saves the read that would otherwise have to come first. `Ok(None)`: one exists, untouched.
pub async fn create_applied<K>(
    api: &Api<K>,
    name: &str,
    object: &K,
) -> kube::Result<Option<PartialObjectMeta<K>>>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut object = object.clone();
    object.meta_mut().resource_version = Some(NO_OBJECT_VERSION.to_string());
    match api
        .patch_metadata(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .await
    {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
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

/// Publishes one event about `regarding`; a failure is logged, never fatal.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
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
    if let Err(e) = recorder.publish(&event, regarding).await {
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
