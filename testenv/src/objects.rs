//! Helpers over Kubeconfigs and the objects around them that the integration tests share:
//! apply and wait, read conditions and Secrets, poll until something holds.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kubeconfig_authority::api::Kubeconfig;
use kubeconfig_authority_pki::{inspect_certificate, kubeconfig as kc_file, parse_certificates};
use serde_json::{Value, json};

pub async fn put_ca_secret(admin: &Client, ns: &str, name: &str, cert: &str, key: &str) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"ca.crt": cert, "ca.key": key},
    });
    Api::<Secret>::namespaced(admin.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

pub async fn apply(admin: &Client, ns: &str, name: &str, spec: Value) -> Kubeconfig {
    let object = json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
        "metadata": {"name": name}, "spec": spec,
    });
    Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap()
}

pub fn spec(username: &str, extra: Value) -> Value {
    let mut spec = json!({
        "authorityRef": {"name": "cluster-ca"},
        "username": username,
        "groups": ["developers"],
        "validity": "1h",
        "secretRef": {"name": format!("{username}-kubeconfig")},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

pub fn ready_condition(kc: &Kubeconfig) -> Option<(String, String, String)> {
    kc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls until `check` returns Some, or panics after `timeout` with the last state.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what} did not happen within {timeout:?}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub async fn wait_condition(
    admin: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Kubeconfig {
    let api = Api::<Kubeconfig>::namespaced(admin.clone(), ns);
    eventually(
        timeout,
        &format!("{ns}/{name} Ready={status} {reason:?}"),
        || async {
            let kc = api.get(name).await.map_err(|e| e.to_string())?;
            match ready_condition(&kc) {
                Some((s, r, _))
                    if s == status
                        && reason.is_none_or(|want| want == r)
                        && kc.status.as_ref().and_then(|s| s.observed_generation)
                            == kc.metadata.generation =>
                {
                    Ok(kc)
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

pub async fn wait_ready(admin: &Client, ns: &str, name: &str) -> Kubeconfig {
    wait_condition(admin, ns, name, "True", None, Duration::from_secs(10)).await
}

/// Deletes a Kubeconfig and waits until its finalizer has run and it is gone.
pub async fn delete_and_wait(admin: &Client, ns: &str, name: &str) {
    let api = Api::<Kubeconfig>::namespaced(admin.clone(), ns);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(10),
        &format!("{ns}/{name} gone"),
        || async {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        },
    )
    .await;
}

pub async fn secret(admin: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(admin.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

pub async fn kubeconfig_of(admin: &Client, ns: &str, secret_name: &str) -> String {
    let s = secret(admin, ns, secret_name)
        .await
        .expect("the Secret exists");
    String::from_utf8(s.data.unwrap()["kubeconfig"].0.clone()).unwrap()
}

/// The serial number and subject of a kubeconfig's client certificate.
pub fn serial_of(kubeconfig: &str) -> (String, String) {
    let parsed = kc_file::parse(kubeconfig).unwrap();
    let info = inspect_certificate(
        &parse_certificates(&parsed.client_certificate_pem.unwrap()).unwrap()[0],
    )
    .unwrap();
    (info.serial, info.issuer)
}

pub fn code(result: Result<impl Sized, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

/// Polls a call until it answers `want` (RBAC changes reach the authorizer within a moment).
pub async fn until_code<F, Fut, T>(what: &str, want: u16, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    eventually(Duration::from_secs(10), what, || {
        let fut = call();
        async move {
            let got = code(fut.await);
            if got == want {
                Ok(())
            } else {
                Err(format!("answered {got}"))
            }
        }
    })
    .await
}

pub async fn list_configmaps(
    client: Client,
    ns: String,
) -> Result<kube::core::ObjectList<ConfigMap>, kube::Error> {
    Api::<ConfigMap>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
}

pub async fn create_configmap(
    client: Client,
    ns: String,
    name: &'static str,
) -> Result<ConfigMap, kube::Error> {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<ConfigMap>::namespaced(client, &ns)
        .create(&PostParams::default(), &cm)
        .await
}

/// Creates the namespace `name` (an existing one is fine).
pub async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// Applies CRDs (server-side, as a user would) and waits until each is established.
pub async fn apply_crds(
    admin: &Client,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(admin.clone());
    let params = kube::api::PatchParams::apply("kubeconfig-authority-tests").force();
    let mut names = Vec::new();
    for crd in crds {
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(&name, &params, &kube::api::Patch::Apply(&crd))
            .await
            .expect("apply CRD");
        names.push(name);
    }
    for name in names {
        eventually(
            Duration::from_secs(30),
            &format!("CRD {name} established"),
            || async {
                let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established
                    .then_some(())
                    .ok_or_else(|| "not established".to_string())
            },
        )
        .await;
    }
}

/// Applies a ClusterRole of these `rules`.
pub async fn cluster_role(admin: &Client, name: &str, rules: Value) {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let role: ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
            .expect("a ClusterRole");
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            name,
            &kube::api::PatchParams::apply("tests").force(),
            &kube::api::Patch::Apply(&role),
        )
        .await
        .expect("apply the ClusterRole");
}

/// Grants the controller `rules` (a ClusterRole and a ClusterRoleBinding named `name`), as an
/// operator adds to its ClusterRole.
pub async fn grant_controller(admin: &Client, name: &str, rules: Value) {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    cluster_role(admin, name, rules).await;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::CONTROLLER_USER}],
    }))
    .expect("a ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(
            name,
            &kube::api::PatchParams::apply("tests").force(),
            &kube::api::Patch::Apply(&binding),
        )
        .await
        .expect("apply the ClusterRoleBinding");
}
