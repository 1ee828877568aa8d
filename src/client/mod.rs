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
    apimachinery::pkg::apis::meta::v1::MicroTime,
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

/// A resourceVersion no object has: etcd's revision, which it is, would have to reach the
/// largest 64-bit signed number.
const NO_OBJECT_VERSION: &str = "9223372036854775807";

/// Creates an object by server-side apply (so that the controller's field manager owns its
/// fields, as for every later apply), but only if no object of that name exists: the applied
/// configuration names a resourceVersion no object has. The API server takes it as a
/// precondition on an object that exists (409 Conflict) and ignores it when it creates one.
/// Saves the read that would otherwise have to come first. `Ok(None)`: one exists, untouched;
/// else the resourceVersion of the object made.
pub async fn create_applied<K>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    object: &K,
) -> kube::Result<Option<Option<String>>>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize,
{
    let mut object = object.clone();
    object.meta_mut().resource_version = Some(NO_OBJECT_VERSION.to_string());
    let request = kube::core::Request::new(K::url_path(&(), namespace))
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .map_err(kube::Error::BuildRequest)?;
    match written(client, request).await {
        Ok(version) => Ok(Some(version)),
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
