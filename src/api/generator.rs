//! The KubeconfigGenerator: one Kubeconfig per matching object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// One Kubeconfig per matching object (by default Kamaji's TenantControlPlanes), kept as
/// objects come and go.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubeconfig-authority.dev",
    version = "v1alpha1",
    kind = "KubeconfigGenerator",
    status = "KubeconfigGeneratorStatus",
    shortname = "kcgen",
    category = "kubeconfig-authority",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Resources", type_ = "integer", json_path = ".status.resources"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableResources"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.authorityRef) || !has(self.target) || (self.target.apiVersion == 'kamaji.clastix.io/v1alpha1' && self.target.kind == 'TenantControlPlane') || (self.target.apiVersion.startsWith('cluster.x-k8s.io/') && self.target.kind == 'Cluster')").message("set authorityRef: only Kamaji TenantControlPlane and Cluster API Cluster targets bring their own authority"))]
pub struct KubeconfigGeneratorSpec {
    /// The namespaces whose objects are considered. Empty: all.
    #[serde(default)]
    pub namespace_selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    /// What kind of object gets a kubeconfig, and which of them. Default: every Kamaji
    /// `TenantControlPlane`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<GeneratorTarget>,
    /// The username: a string, or a field of the object.
    pub user: CompoundValue,
    /// The groups: strings, or fields of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = admission::MAX_GROUPS))]
    pub groups: Vec<CompoundValue>,
    /// For TenantControlPlane and Cluster API Cluster targets: the key of the admin kubeconfig's
    /// Secret whose server and CA the kubeconfigs use. Kamaji's `<tcp>-admin-kubeconfig`:
    /// `admin.conf`, `admin.svc` (default), `super-admin.conf`, `super-admin.svc`; Cluster API's
    /// `<cluster>-kubeconfig`: `value` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub control_plane_endpoint_from: Option<String>,
    /// For other kinds: the authority that issues every kubeconfig (an Authority of the
    /// object's namespace, or a ClusterAuthority). TenantControlPlanes and Cluster API
    /// Clusters get an Authority each, from their CA and admin kubeconfig Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_ref: Option<AuthorityRef>,
    /// For TenantControlPlane and Cluster API Cluster targets: the policy of the authority made
    /// for each (by default no `system:` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// The name of each Kubeconfig and its Secret, in the object's namespace: `{object}` and
    /// `{generator}` are replaced. Default `{object}-{generator}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// Stamped on every Kubeconfig.
    pub validity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
    /// The keys of each Secret (see Kubeconfig `spec.secretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8), inner(length(max = 253)))]
    pub kubeconfig_keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_keys: Option<bool>,
    /// RBAC bound for each identity: in this cluster for targets of this cluster, in the
    /// tenant cluster for a TenantControlPlane or a Cluster API Cluster (its Authority's
    /// target; its `policy` must then list the roles, see `allowedClusterRoles`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Each credential registered with Argo CD (see Kubeconfig `spec.argoCD`): one cluster
    /// per object. Without `name`, each is named `<namespace>.<object>`.
    #[serde(default, rename = "argoCD", skip_serializing_if = "Option::is_none")]
    pub argo_cd: Option<ArgoCdCluster>,
}

/// A kind of object and a selector over its labels.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorTarget {
    /// Default `kamaji.clastix.io/v1alpha1`.
    #[serde(default = "default_target_api_version")]
    pub api_version: String,
    /// Default `TenantControlPlane`.
    #[serde(default = "default_target_kind")]
    pub kind: String,
    /// Which objects of that kind (by labels). Empty: all.
    #[serde(default)]
    pub selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
}

pub const KAMAJI_API_VERSION: &str = "kamaji.clastix.io/v1alpha1";
pub const KAMAJI_KIND: &str = "TenantControlPlane";
pub const CLUSTER_API_GROUP: &str = "cluster.x-k8s.io";
pub const CLUSTER_API_KIND: &str = "Cluster";

/// A kind of object that stands for a cluster of its own, whose Secrets the generator knows:
/// each object gets an Authority that signs with its CA and binds in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterKind {
    /// The Secret of the cluster's CA (`tls.crt`/`tls.key` or `ca.crt`/`ca.key`), after the
    /// object's name.
    pub ca_suffix: &'static str,
    /// The Secret of its admin kubeconfig, after the object's name.
    pub kubeconfig_suffix: &'static str,
    /// The key of that Secret used by default.
    pub kubeconfig_key: &'static str,
}

impl GeneratorTarget {
    /// Kamaji's TenantControlPlane (`<tcp>-ca`, `<tcp>-admin-kubeconfig`) and Cluster API's
    /// Cluster, any version (`<cluster>-ca`, `<cluster>-kubeconfig`); `None` for other kinds.
    pub fn cluster_kind(&self) -> Option<ClusterKind> {
        if self.api_version == KAMAJI_API_VERSION && self.kind == KAMAJI_KIND {
            return Some(ClusterKind {
                ca_suffix: "-ca",
                kubeconfig_suffix: "-admin-kubeconfig",
                kubeconfig_key: "admin.svc",
            });
        }
        let group = self.api_version.split_once('/').map(|(g, _)| g);
        (group == Some(CLUSTER_API_GROUP) && self.kind == CLUSTER_API_KIND).then_some(ClusterKind {
            ca_suffix: "-ca",
            kubeconfig_suffix: "-kubeconfig",
            kubeconfig_key: "value",
        })
    }
}

fn default_target_api_version() -> String {
    KAMAJI_API_VERSION.into()
}
fn default_target_kind() -> String {
    KAMAJI_KIND.into()
}

impl Default for GeneratorTarget {
    fn default() -> Self {
        Self {
            api_version: default_target_api_version(),
            kind: default_target_kind(),
            selector: Default::default(),
        }
    }
}

/// A string, or a field of the selected object. Set exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.stringValue) != has(self.fromDefinition)").message("set exactly one of stringValue and fromDefinition"))]
pub struct CompoundValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub string_value: Option<String>,
    /// A field path into the object: `metadata.name`, `metadata.namespace`,
    /// `metadata.labels['team']`, `spec.some.field`. The field must hold a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub from_definition: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigGeneratorStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Objects matched.
    #[serde(default)]
    pub resources: i32,
    /// Of those, how many have a Ready kubeconfig.
    #[serde(default)]
    pub available_resources: i32,
    /// The objects that have no working kubeconfig, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<GeneratorError>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorError {
    /// `<namespace>/<name>` of the object.
    pub resource: String,
    pub message: String,
}
