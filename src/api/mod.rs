//! The custom resources, `kubeconfig-authority.dev/v1alpha1`: the only place their schema lives.
//! `kubeconfig-authority crd` prints the CRDs generated from these types; `crds/` holds that
//! output (a test fails when it is stale).

// kube-derive's repeated `printcolumn(...)` arguments read as duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

pub mod admission;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "kubeconfig-authority.dev";
pub const VERSION: &str = "v1alpha1";

/// The field manager of every server-side apply this controller makes.
pub const FIELD_MANAGER: &str = "kubeconfig-authority";
/// The finalizer that unbinds RBAC and deletes the Secret before a Kubeconfig goes.
pub const FINALIZER: &str = "kubeconfig-authority.dev/cleanup";
/// On everything the controller creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kubeconfig-authority";
/// The UID of the Kubeconfig an object belongs to (a label: selectable, and unique per object).
pub const KUBECONFIG_UID_LABEL: &str = "kubeconfig-authority.dev/kubeconfig-uid";
/// `<namespace>/<name>` of the Kubeconfig an object belongs to (an annotation: names can be
/// longer than a label value may be).
pub const KUBECONFIG_ANNOTATION: &str = "kubeconfig-authority.dev/kubeconfig";
/// On a Kubeconfig: a new value (any text; `kubeconfig-authority renew` writes the time) asks
/// for one renewal now. The value acted on is recorded in `status.renewRequestedAt`; the same
/// value again does nothing.
pub const RENEW_ANNOTATION: &str = "kubeconfig-authority.dev/renew-requested-at";
/// On a Kubeconfig being deleted, set to `"true"` by an admin: give up on its target cluster
/// (which cannot be reached) and leave whatever was made there. The admission policy allows
/// it only to whoever may `orphan` kubeconfigs (a verb of its own: cluster admins).
pub const ORPHAN_TARGET_ANNOTATION: &str = "kubeconfig-authority.dev/orphan-target";
/// The label by which Argo CD finds cluster Secrets, and its value.
pub const ARGOCD_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";
pub const ARGOCD_CLUSTER: &str = "cluster";
/// On the Secret: a digest of everything the issued kubeconfig was made from.
pub const INPUTS_ANNOTATION: &str = "kubeconfig-authority.dev/inputs-digest";
/// On the Secret: a digest of the data written and of [`CREDENTIAL_ANNOTATION`], to notice edits.
pub const DATA_ANNOTATION: &str = "kubeconfig-authority.dev/data-digest";
/// On the Secret: the credential written (kind, serial or token ID, validity), so that its
/// renewal can be planned without parsing the data.
pub const CREDENTIAL_ANNOTATION: &str = "kubeconfig-authority.dev/credential";
/// The group prefix that makes a certificate's identity unique to one Kubeconfig object.
pub const UID_GROUP_PREFIX: &str = "kubeconfig-uid:";

/// A kubeconfig for one identity, kept valid by the controller in a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubeconfig-authority.dev",
    version = "v1alpha1",
    kind = "Kubeconfig",
    namespaced,
    status = "KubeconfigStatus",
    shortname = "kcfg",
    category = "kubeconfig-authority",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Username", type_ = "string", json_path = ".spec.username"),
    printcolumn(
        name = "ServiceAccount",
        type_ = "string",
        json_path = ".spec.serviceAccountRef.name"
    ),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.target.name",
        priority = 1
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.username) != has(self.serviceAccountRef)").message("set exactly one of username and serviceAccountRef"))]
#[x_kube(validation = Rule::new("!has(self.serviceAccountRef) || !has(self.groups)").message("a ServiceAccount's groups come with its token: remove groups"))]
pub struct KubeconfigSpec {
    /// The Authority (in this namespace) or ClusterAuthority that issues this kubeconfig. When
    /// omitted, the controller's default authority (its `--default-authority` flag) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_ref: Option<AuthorityRef>,
    /// The Kubernetes username: the client certificate's common name (CN). Set this or
    /// `serviceAccountRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(NO_CONTROL_RULE).message("username: no control characters (newlines, tabs) and no white space at either end"))]
    pub username: Option<String>,
    /// A ServiceAccount of this namespace: the kubeconfig holds a token for it from the
    /// TokenRequest API, bound to the kubeconfig's Secret and rotated. Needs an authority whose
    /// signer is `serviceAccountToken`. Set this or `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<ServiceAccountRef>,
    /// Groups of the user: the client certificate's organizations (O). The controller adds
    /// `kubeconfig:<name>` and `kubeconfig-uid:<uid>`, the identity RBAC is bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = admission::MAX_GROUPS), inner(length(max = 253)), extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(g, size(g) > 0)").message("a group must not be empty"))]
    #[x_kube(validation = Rule::new(GROUPS_CONTROL_RULE).message("groups: no control characters (newlines, tabs) and no white space at either end"))]
    #[x_kube(validation = Rule::new("self.all(g, !g.startsWith('kubeconfig:') && !g.startsWith('kubeconfig-uid:'))").message("groups starting with kubeconfig: or kubeconfig-uid: are added by the controller and cannot be requested"))]
    pub groups: Vec<String>,
    /// How long each certificate is valid, as a Kubernetes duration: `24h`, `90m`, `720h`
    /// (no days: write `168h` for a week). Cut to the CA's own expiry.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub validity: String,
    /// How long before expiry the certificate is renewed (a duration). Default: a third of the
    /// validity. A value not shorter than the validity falls back to that default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub renew_before: Option<String>,
    /// The private key of each certificate. Default: ECDSA P-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
    /// The Secret (in this namespace) the kubeconfig is written to.
    pub secret_ref: SecretRef,
    /// RBAC bound to this kubeconfig's identity, and unbound when it goes.
    // Boxed, as `distribution`, `argo_cd` and the status's `target` are: most Kubeconfigs
    // lack them, and the cache holds every Kubeconfig (see the test at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Box<Authorization>>,
    /// Copies of the Secret in other namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Box<Distribution>>,
    /// The credential registered with Argo CD as a cluster Secret, in the namespace the
    /// authority's `policy.argoCD` names, rewritten on every rotation and removed with the
    /// Kubeconfig.
    #[serde(default, rename = "argoCD", skip_serializing_if = "Option::is_none")]
    pub argo_cd: Option<Box<ArgoCdCluster>>,
}

/// How the credential appears in Argo CD (the keys of its cluster Secret).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgoCdCluster {
    /// The cluster's name in Argo CD. Default `<namespace>.<name>` of the Kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(NO_CONTROL_RULE).message("name must have no control characters and no white space at either end"))]
    pub name: Option<String>,
    /// The namespaces Argo CD may manage with it (`namespaces`). Empty: all it can reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// With `namespaces`: whether Argo CD may also manage cluster-scoped objects
    /// (`clusterResources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_resources: Option<bool>,
    /// The Argo CD project the cluster is scoped to (`project`); the authority's
    /// `policy.argoCD.allowedProjects` must list it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub project: Option<String>,
}

/// Where an authority lets its Kubeconfigs register with Argo CD.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgoCdPolicy {
    /// The namespace Argo CD reads cluster Secrets from (usually `argocd`).
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The projects a cluster may be scoped to (patterns). Unset: none (clusters are
    /// registered unscoped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_projects: Option<Vec<String>>,
}

/// A ServiceAccount in the Kubeconfig's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(SUBDOMAIN_RULE).message(SUBDOMAIN_MESSAGE))]
    pub name: String,
    /// Also let the ServiceAccount impersonate itself (a Role and a RoleBinding in this
    /// namespace): Flux needs this when it uses this kubeconfig and impersonates the same
    /// ServiceAccount. It grants nothing the ServiceAccount does not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonate_self: Option<bool>,
}

/// Where copies of the Secret go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Distribution {
    /// A copy of the Secret, under the same name, in every namespace whose labels match (for
    /// example `capsule.clastix.io/tenant: oil`), kept equal to it through every rotation and
    /// removed when the namespace stops matching or the Kubeconfig goes. A Secret of that name
    /// the controller did not create is never overwritten.
    pub namespace_selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
}

/// No control character anywhere, no white space at either end.
const NO_CONTROL_RULE: &str = r"!self.matches('[\\x00-\\x1f\\x7f]|^\\s|\\s$')";
const GROUPS_CONTROL_RULE: &str = r"self.all(g, !g.matches('[\\x00-\\x1f\\x7f]|^\\s|\\s$'))";
/// A DNS-1123 subdomain: the names of Secrets and most objects.
const SUBDOMAIN_RULE: &str =
    r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
const SUBDOMAIN_MESSAGE: &str = "must be a valid object name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit";
/// A DNS-1123 label: the names of namespaces.
const LABEL_RULE: &str = r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
/// The names of Roles and ClusterRoles: anything a path segment may be.
const ROLE_NAME_RULE: &str =
    r"self.all(r, size(r) > 0 && !r.matches('[/%]') && r != '.' && r != '..')";
const ROLE_NAME_ONE_RULE: &str = r"!self.matches('[/%]') && self != '.' && self != '..'";
const ROLE_NAME_MESSAGE: &str =
    "role names must not be empty, contain '/' or '%', or be '.' or '..'";

const DURATION_RULE: &str = r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$')";
const DURATION_MESSAGE: &str =
    "must be a duration such as 24h, 90m or 1h30m (units h, m, s, ms; no days)";

/// Which authority issues a kubeconfig.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityRef {
    /// `Authority` (in the Kubeconfig's namespace, the default) or `ClusterAuthority`.
    #[serde(default)]
    pub kind: AuthorityKind,
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(SUBDOMAIN_RULE).message(SUBDOMAIN_MESSAGE))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum AuthorityKind {
    #[default]
    Authority,
    ClusterAuthority,
}

/// Key algorithm and size, as cert-manager spells them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.algorithm != 'Ed25519' || !has(self.size)").message("Ed25519 keys have no size"))]
#[x_kube(validation = Rule::new("self.algorithm != 'ECDSA' || !has(self.size) || self.size in [256, 384]").message("ECDSA sizes are 256 or 384"))]
#[x_kube(validation = Rule::new("self.algorithm != 'RSA' || !has(self.size) || self.size in [2048, 3072, 4096]").message("RSA sizes are 2048, 3072 or 4096"))]
pub struct PrivateKeySpec {
    /// `ECDSA` (default), `RSA` or `Ed25519`.
    #[serde(default)]
    pub algorithm: KeyAlgorithmName,
    /// ECDSA: 256 (default) or 384. RSA: 2048 (default), 3072 or 4096. Ed25519: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithmName {
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    #[serde(rename = "RSA")]
    Rsa,
    Ed25519,
}

impl KeyAlgorithmName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ecdsa => "ECDSA",
            Self::Rsa => "RSA",
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// The Secret a kubeconfig is written to, and which keys it gets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name, in the Kubeconfig's namespace. A Secret of this name that the
    /// controller did not create is never overwritten.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(SUBDOMAIN_RULE).message(SUBDOMAIN_MESSAGE))]
    pub name: String,
    /// The keys the kubeconfig is written under. Default: `kubeconfig` and `value` (the key Flux
    /// reads when `spec.kubeConfig.secretRef.key` is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new("size(self) > 0 && self.all(k, k.matches('^[-._a-zA-Z0-9]+$') && !(k in ['tls.crt', 'tls.key', 'ca.crt']))").message("kubeconfig keys must be Secret keys ([-._a-zA-Z0-9]+) other than tls.crt, tls.key and ca.crt"))]
    pub kubeconfig_keys: Option<Vec<String>>,
    /// Whether to write `tls.crt`, `tls.key` and `ca.crt` beside the kubeconfig. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_keys: Option<bool>,
}

/// RBAC for the kubeconfig's identity (the group `kubeconfig-uid:<uid>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// ClusterRoles bound cluster-wide: one ClusterRoleBinding each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_role_bindings: Option<ClusterRoleBindings>,
    /// Roles or ClusterRoles bound in one namespace each: one RoleBinding each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = admission::MAX_ROLE_BINDINGS))]
    pub role_bindings: Vec<NamespacedBinding>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleBindings {
    /// Names of ClusterRoles.
    #[serde(default)]
    #[schemars(length(max = admission::MAX_CLUSTER_ROLES), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new(ROLE_NAME_RULE).message(ROLE_NAME_MESSAGE))]
    pub cluster_roles: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clusterRole) != has(self.role)").message("set exactly one of clusterRole and role"))]
pub struct NamespacedBinding {
    /// The namespace the RoleBinding is made in.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(LABEL_RULE).message("namespace must be a valid namespace name: lower-case letters, digits and '-'"))]
    pub namespace: String,
    /// A ClusterRole to bind in that namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(ROLE_NAME_ONE_RULE).message(ROLE_NAME_MESSAGE))]
    pub cluster_role: Option<String>,
    /// A Role of that namespace to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(ROLE_NAME_ONE_RULE).message(ROLE_NAME_MESSAGE))]
    pub role: Option<String>,
}

/// What the controller last did and saw.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigStatus {
    /// `Ready`: the Secret holds a kubeconfig whose certificate or token is valid now. When
    /// False, the reason says what is wrong and the message how to fix it. `Distributed` (with
    /// `spec.distribution`): every matching namespace holds a current copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The current certificate's serial number (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// The current token's ID (its `jti` claim), for ServiceAccount token kubeconfigs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// How the API server names the current credential in audit logs and in `kubectl auth
    /// whoami` (the user's extra `authentication.kubernetes.io/credential-id`):
    /// `X509SHA256=<fingerprint>` for a certificate, `JTI=<token ID>` for a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub credential_id: Option<CredentialId>,
    /// The last value of the annotation `kubeconfig-authority.dev/renew-requested-at` that
    /// was acted on (a renewal was forced for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_requested_at: Option<String>,
    /// When the controller will renew the certificate or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// How many copies of the Secret `spec.distribution` keeps in other namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed_copies: Option<i32>,
    /// The target cluster the credential's bindings were made in (the Secret of its admin
    /// kubeconfig), when its authority names one. Cleanup goes there, even if the authority
    /// changes or goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Box<KeyRef>>,
}

/// How the API server names a credential in audit logs and in `kubectl auth whoami`:
/// `X509SHA256=<fingerprint>` (lower-case hex) for a certificate, `JTI=<token ID>` for a token.
/// It reads and writes as that text; a certificate's is kept as the 32 bytes of its
/// fingerprint, not 75 characters (twice per Kubeconfig in the controller's caches: the status
/// and the managed Secret's record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CredentialId {
    /// Not known (records of older versions).
    #[default]
    Unknown,
    Certificate([u8; 32]),
    Other(String),
}

const CERTIFICATE_ID_PREFIX: &str = "X509SHA256=";

impl CredentialId {
    pub fn is_unknown(&self) -> bool {
        *self == Self::Unknown
    }
}

impl From<String> for CredentialId {
    fn from(text: String) -> Self {
        let fingerprint = text
            .strip_prefix(CERTIFICATE_ID_PREFIX)
            .filter(|hex| {
                hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
            .map(|hex| {
                let mut bytes = [0u8; 32];
                for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
                    let digit = |b: u8| {
                        if b.is_ascii_digit() {
                            b - b'0'
                        } else {
                            b - b'a' + 10
                        }
                    };
                    *byte = digit(pair[0]) << 4 | digit(pair[1]);
                }
                bytes
            });
        match fingerprint {
            Some(bytes) => Self::Certificate(bytes),
            None if text.is_empty() => Self::Unknown,
            None => Self::Other(text),
        }
    }
}

impl std::fmt::Display for CredentialId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown => Ok(()),
            Self::Certificate(bytes) => {
                f.write_str(CERTIFICATE_ID_PREFIX)?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl Serialize for CredentialId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CredentialId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// Where kubeconfigs point and how identities are proven. Namespaced: usable by the
/// Kubeconfigs of its own namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubeconfig-authority.dev",
    version = "v1alpha1",
    kind = "Authority",
    namespaced,
    status = "AuthorityStatus",
    shortname = "kca",
    category = "kubeconfig-authority",
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.server"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.kubeconfigSecretRef.name"
    ),
    printcolumn(
        name = "Reachable",
        type_ = "boolean",
        json_path = ".status.target.reachable"
    ),
    printcolumn(
        name = "Last Contact",
        type_ = "date",
        json_path = ".status.target.lastContact"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct AuthoritySpec {
    #[serde(flatten)]
    pub config: AuthorityConfig,
}

/// What the controller found about an authority.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityStatus {
    /// `CAKeyIsolated`: False when the CA key's Secret sits in a namespace where Kubeconfigs
    /// are requested (whoever reads Secrets there can sign any identity). Set once a
    /// Kubeconfig uses the authority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The target cluster as the controller last saw it (`spec.target`, once a Kubeconfig
    /// uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetContact>,
}

/// Whether the controller can reach a target cluster, and when it last heard from it. Written
/// when reachability changes, and every five minutes while the target answers (so a
/// `lastContact` older than that with `reachable: true` means the controller itself is not
/// reporting).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetContact {
    pub reachable: bool,
    /// When a watch in the target last made progress (an event, a list, a bookmark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
    /// Why it cannot be reached, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The cluster-scoped twin of `Authority`, usable from every namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubeconfig-authority.dev",
    version = "v1alpha1",
    kind = "ClusterAuthority",
    status = "AuthorityStatus",
    shortname = "kcca",
    category = "kubeconfig-authority",
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.server"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.kubeconfigSecretRef.name"
    ),
    printcolumn(
        name = "Reachable",
        type_ = "boolean",
        json_path = ".status.target.reachable"
    ),
    printcolumn(
        name = "Last Contact",
        type_ = "date",
        json_path = ".status.target.lastContact"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ClusterAuthoritySpec {
    #[serde(flatten)]
    pub config: AuthorityConfig,
}

/// The settings an Authority and a ClusterAuthority share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.server) || has(self.kubeconfigSecretRef) || has(self.target)").message("set server, or kubeconfigSecretRef or target to take it from a kubeconfig"))]
pub struct AuthorityConfig {
    /// The API server URL written into every kubeconfig, e.g. `https://api.example.com:6443`.
    /// Default: the server of `kubeconfigSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("server must be an http(s) URL such as https://api.example.com:6443"))]
    pub server: Option<String>,
    /// A kubeconfig in a Secret (for example Kamaji's `<tcp>-admin-kubeconfig`, key
    /// `admin.svc`) whose server and CA are used when `server` and `caBundle` are not set.
    /// The key defaults to `kubeconfig`; changes to the Secret are followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<KeyRef>,
    /// The CA bundle that verifies the API server, written into every kubeconfig. Default: the
    /// signer's CA certificate (right when one CA signs both, as kubeadm's does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
    /// The cluster the kubeconfigs are for, when it is not the controller's own: the bindings
    /// of `spec.authorization`, the self-impersonation Role, ServiceAccount tokens and CSRs are
    /// made there (the Secret with the kubeconfig stays beside the Kubeconfig). Its server
    /// and CA are the defaults of `server` and `caBundle`. Kubeconfigs of such an authority
    /// may bind only the roles its policy lists (`allowedClusterRoles`, `allowedRoles`): the
    /// admission guard cannot see the target's RBAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetCluster>,
    /// How identities are proven.
    pub signer: Signer,
    /// What Kubeconfigs using this authority may ask for. The controller refuses, and issues
    /// nothing for, a Kubeconfig that breaks it (condition reason `PolicyViolation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

/// A cluster other than the controller's own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetCluster {
    /// A kubeconfig with the rights to bind roles (and, as needed, to request tokens and
    /// CSRs) in the target: Kamaji's `<tcp>-admin-kubeconfig` (key `admin.svc`), Cluster API's
    /// `<cluster>-kubeconfig` (key `value`), vcluster's `vc-<name>` (key `config`), or any.
    /// The key defaults to `kubeconfig`. A changed Secret (a rotated credential) is followed.
    pub kubeconfig_secret_ref: KeyRef,
}

/// An issuance policy. Patterns match whole names; `*` matches any run of characters.
///
/// Without a policy, or with a field unset, the defaults hold: any validity, any username and
/// group except those starting with `system:` (which only a pattern that itself starts with
/// `system:` can allow; `system:masters` only when listed by exactly that name), and any role.
/// Whoever creates a Kubeconfig must in addition be able to impersonate its identity and bind
/// its roles (the admission policy in `config/admission`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// The longest `spec.validity` allowed (a duration such as `720h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub max_validity: Option<String>,
    /// Usernames that may be requested (patterns). Unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub allowed_usernames: Option<Vec<String>>,
    /// Usernames that may never be requested (patterns); wins over `allowedUsernames`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub forbidden_usernames: Vec<String>,
    /// Groups that may be requested (patterns). Unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub allowed_groups: Option<Vec<String>>,
    /// Groups that may never be requested (patterns); wins over `allowedGroups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub forbidden_groups: Vec<String>,
    /// ClusterRoles that may be bound, cluster-wide or in a namespace (patterns). Unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub allowed_cluster_roles: Option<Vec<String>>,
    /// Roles that may be bound in their namespace (patterns). Unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub allowed_roles: Option<Vec<String>>,
    /// The namespaces whose Kubeconfigs may use this authority (by their labels). Unset: all
    /// (for an Authority: its own namespace, which it alone serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// The namespaces copies of issued Secrets may go to (`spec.distribution`), by their
    /// labels. Unset: none. A copy also needs the credential's own identity to be allowed to
    /// create and update that Secret there (a SubjectAccessReview, asked again whenever the
    /// copy is written and at least every five minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution_namespace_selector:
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Lets Kubeconfigs register their credential with Argo CD (`spec.argoCD`). Unset: they
    /// may not. A cluster Secret is written only where no other Secret there registers the
    /// same server (Argo CD tells clusters apart by server URL: two would share one cache
    /// and mix their credentials).
    #[serde(default, rename = "argoCD", skip_serializing_if = "Option::is_none")]
    pub argo_cd: Option<ArgoCdPolicy>,
}

/// A CA bundle, inline or from a key of a Secret or ConfigMap. Set exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.inline), has(self.secretRef), has(self.configMapRef)].filter(x, x).size() == 1").message("set exactly one of inline, secretRef and configMapRef"))]
pub struct CaBundle {
    /// PEM certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    pub name: String,
    /// Default `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For a ClusterAuthority: the namespace of the object (required there). For an Authority:
    /// its own namespace, which is also the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// How identities are proven. Set exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.caSecretRef), has(self.serviceAccountToken), has(self.certificateSigningRequest)].filter(x, x).size() == 1").message("set exactly one of caSecretRef, serviceAccountToken and certificateSigningRequest"))]
pub struct Signer {
    /// Client certificates signed with a CA whose certificate and key are in a Secret:
    /// `tls.crt`/`tls.key` (cert-manager) or `ca.crt`/`ca.key` (kubeadm, Kamaji).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<ObjectRef>,
    /// ServiceAccount tokens from the TokenRequest API, for Kubeconfigs with
    /// `serviceAccountRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<TokenSigner>,
    /// Client certificates signed through the Kubernetes CSR API: the controller creates and
    /// approves a CertificateSigningRequest, and the signer (kube-controller-manager for
    /// `kubernetes.io/kube-apiserver-client`) signs it. No CA key is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_signing_request: Option<CsrSigner>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSigner {
    /// The token's audiences. Default: the API server's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub audiences: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsrSigner {
    /// Default `kubernetes.io/kube-apiserver-client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 571))]
    pub signer_name: Option<String>,
}

/// A named object; for a ClusterAuthority the namespace is required, for an Authority it is
/// its own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

mod generator;

pub use generator::*;

/// The CRDs, in the order they are installed.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        Authority::crd(),
        ClusterAuthority::crd(),
        Kubeconfig::crd(),
        KubeconfigGenerator::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream: what `kubeconfig-authority crd` prints and
/// `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out += "---\n";
        out += &serde_yaml::to_string(&crd)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// The controller's cache holds every Kubeconfig, each in one allocation with the two
    /// counters of its `Arc`. The optional parts of a spec and status that most objects lack
    /// are boxed: inline they took that allocation from jemalloc's 896-byte size class to
    /// the 1,280-byte one, 384 bytes more per Kubeconfig (`make bench`, 100,000 of them).
    #[test]
    fn a_cached_kubeconfig_fits_the_896_byte_size_class() {
        let size = std::mem::size_of::<super::Kubeconfig>() + 2 * std::mem::size_of::<usize>();
        assert!(size <= 896, "a cached Kubeconfig takes {size} bytes");
    }

    #[test]
    fn a_credential_id_reads_and_writes_as_its_text() {
        use super::CredentialId;
        let fingerprint = format!("X509SHA256={}", "0123456789abcdef".repeat(4));
        for (text, kept_as_bytes) in [
            (fingerprint.as_str(), true),
            ("JTI=2f6e3c1a-7d5b-4b8e-9c1d-0a1b2c3d4e5f", false),
            // Not what the API server writes (upper case, short): kept as it came.
            (
                "X509SHA256=0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                false,
            ),
            ("X509SHA256=0123", false),
            ("", false),
        ] {
            let id: CredentialId = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(
                matches!(id, CredentialId::Certificate(_)),
                kept_as_bytes,
                "{text}"
            );
            assert_eq!(serde_json::to_value(&id).unwrap(), serde_json::json!(text));
            assert_eq!(id.to_string(), text);
        }
        assert!(CredentialId::from(String::new()).is_unknown());
    }
}
