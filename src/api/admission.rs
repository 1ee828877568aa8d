//! The escalation guard: ValidatingAdmissionPolicies (no webhook) that let a Kubeconfig be
//! created or changed only by someone who could get the same access without this controller:
//! `impersonate` on its username and each of its groups (for a ServiceAccount token: the right to
//! impersonate that ServiceAccount or to create tokens for it), `bind` on each role it binds.
//!
//! `kubeconfig-authority admission` prints them; `config/admission/` holds that output (a test
//! fails when it is stale).
//!
//! The API server charges each authorization check 350,000 of a 10,000,000 budget per policy
//! binding, and 1,000,000 per expression: so each check is its own expression (one per list
//! index), and the checks are spread over three policies. The schema caps the lists at
//! [`MAX_GROUPS`], [`MAX_CLUSTER_ROLES`] and [`MAX_ROLE_BINDINGS`] so that every entry is
//! checked.

use serde_json::{Value, json};

/// The most groups a Kubeconfig may request (each is an authorization check at admission).
pub const MAX_GROUPS: usize = 20;
/// The most ClusterRoles bound cluster-wide by one Kubeconfig.
pub const MAX_CLUSTER_ROLES: usize = 20;
/// The most RoleBindings of one Kubeconfig.
pub const MAX_ROLE_BINDINGS: usize = 20;

const IMPERSONATE_HINT: &str = "grant the requester the verb impersonate on it (core API group, resource users or groups, resourceNames naming it), or have someone who may create the Kubeconfig";
const BIND_HINT: &str = "grant the requester the verb bind on it (API group rbac.authorization.k8s.io, resource clusterroles or roles, resourceNames naming it; in that namespace for a RoleBinding)";

/// The username of the controller's ServiceAccount as `config/` installs it. Installing in
/// another namespace means changing it here (and regenerating) or in the policies.
pub const CONTROLLER_USER: &str =
    "system:serviceaccount:kubeconfig-authority-system:kubeconfig-authority";

fn policy(name: &str, purpose: &str, variables: Value, validations: Vec<Value>) -> Value {
    policy_for("kubeconfigs", name, purpose, variables, validations)
}

fn policy_for(
    resource: &str,
    name: &str,
    purpose: &str,
    variables: Value,
    validations: Vec<Value>,
) -> Value {
    let mut policy = guard(
        name,
        purpose,
        resource,
        &["CREATE", "UPDATE"],
        // Only a change of what is asked for is checked: the controller's own finalizer
        // and metadata updates are not requests for access.
        json!([{
            "name": "spec-changed",
            "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
        }, {
            // The Kubeconfigs the controller makes itself: for a KubeconfigGenerator (whose
            // author the generator policy checks) and for an annotated ServiceAccount.
            "name": "not-the-controller",
            "expression": format!("request.userInfo.username != '{CONTROLLER_USER}'"),
        }]),
        validations,
    );
    policy["spec"]["variables"] = variables;
    policy
}

/// A ValidatingAdmissionPolicy of this project over `resource`.
fn guard(
    name: &str,
    purpose: &str,
    resource: &str,
    operations: &[&str],
    match_conditions: Value,
    validations: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": name,
            "annotations": {"kubeconfig-authority.dev/purpose": purpose},
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [super::GROUP],
                    "apiVersions": ["*"],
                    "resources": [resource],
                    "operations": operations,
                }],
            },
            "matchConditions": match_conditions,
            "validations": validations,
        },
    })
}

fn binding(name: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    })
}

fn validation(expression: String, message_expression: String) -> Value {
    json!({
        "expression": expression,
        "messageExpression": message_expression,
        "reason": "Forbidden",
    })
}

/// The three policies and their bindings, in the order they are applied.
pub fn admission_objects() -> Vec<Value> {
    let users = "authorizer.group('').resource('users')";
    let groups = "authorizer.group('').resource('groups')";
    let rbac = "authorizer.group('rbac.authorization.k8s.io')";

    // Kubernetes checks impersonation of a ServiceAccount's username on the resource
    // serviceaccounts (in its namespace), not users: so does the guard.
    let parts = "object.spec.username.split(':')";
    let as_service_account =
        format!("object.spec.username.startsWith('system:serviceaccount:') && size({parts}) == 4");
    let mut identity = vec![validation(
        format!(
            "!has(object.spec.username) || ({as_service_account} ? authorizer.group('').resource('serviceaccounts').namespace({parts}[2]).name({parts}[3]).check('impersonate').allowed() : {users}.name(object.spec.username).check('impersonate').allowed())"
        ),
        format!(
            "'you may not request a kubeconfig for user \"' + object.spec.username + '\": you cannot impersonate ' + ({as_service_account} ? 'that ServiceAccount; grant the requester the verb impersonate on serviceaccounts naming it in its namespace' : 'that user; {IMPERSONATE_HINT}') + ''"
        ),
    )];
    let sa = "object.spec.serviceAccountRef.name";
    let serviceaccounts =
        "authorizer.group('').resource('serviceaccounts').namespace(object.metadata.namespace)";
    identity.push(validation(
        format!(
            "!has(object.spec.serviceAccountRef) || {serviceaccounts}.name({sa}).check('impersonate').allowed() || {serviceaccounts}.subresource('token').name({sa}).check('create').allowed()"
        ),
        format!(
            "'you may not request a kubeconfig for ServiceAccount ' + object.metadata.namespace + '/' + {sa} + ': you can neither impersonate it nor create tokens for it; grant the requester the verb create on serviceaccounts/token (or impersonate on serviceaccounts) naming it'"
        ),
    ));
    identity.extend((0..MAX_GROUPS).map(|i| {
        validation(
            format!(
                "size(variables.groups) <= {i} || variables.anyGroup || {groups}.name(variables.groups[{i}]).check('impersonate').allowed()"
            ),
            format!(
                "'you may not request a kubeconfig in group \"' + variables.groups[{i}] + '\": you cannot impersonate that group; {IMPERSONATE_HINT}'"
            ),
        )
    }));

    let cluster_roles = (0..MAX_CLUSTER_ROLES)
        .map(|i| {
            validation(
                format!(
                    "size(variables.clusterRoles) <= {i} || variables.anyClusterRole || {rbac}.resource('clusterroles').name(variables.clusterRoles[{i}]).check('bind').allowed()"
                ),
                format!(
                    "'you may not bind ClusterRole \"' + variables.clusterRoles[{i}] + '\" cluster-wide: you lack bind on it; {BIND_HINT}'"
                ),
            )
        })
        .collect();

    let role_bindings = (0..MAX_ROLE_BINDINGS)
        .map(|i| {
            let b = format!("variables.roleBindings[{i}]");
            validation(
                format!(
                    "size(variables.roleBindings) <= {i} || {rbac}.resource(has({b}.clusterRole) ? 'clusterroles' : 'roles').namespace({b}.namespace).name(has({b}.clusterRole) ? {b}.clusterRole : {b}.role).check('bind').allowed()"
                ),
                format!(
                    "'you may not bind ' + (has({b}.clusterRole) ? 'ClusterRole \"' + {b}.clusterRole : 'Role \"' + {b}.role) + '\" in namespace ' + {b}.namespace + ': you lack bind on it there; {BIND_HINT}'"
                ),
            )
        })
        .collect();

    let authorization = "has(object.spec.authorization)";
    vec![
        policy(
            "kubeconfig-authority-identity",
            "Only who may impersonate a Kubeconfig's username and groups (or get its ServiceAccount's tokens) may request it.",
            json!([
                {"name": "groups", "expression": "has(object.spec.groups) ? object.spec.groups : []"},
                {"name": "anyGroup", "expression": format!("{groups}.check('impersonate').allowed()")},
            ]),
            identity,
        ),
        binding("kubeconfig-authority-identity"),
        policy(
            "kubeconfig-authority-cluster-roles",
            "Only who may bind a ClusterRole may have a Kubeconfig bind it cluster-wide.",
            json!([
                {"name": "clusterRoles", "expression": format!(
                    "{authorization} && has(object.spec.authorization.clusterRoleBindings) && has(object.spec.authorization.clusterRoleBindings.clusterRoles) ? object.spec.authorization.clusterRoleBindings.clusterRoles : []"
                )},
                {"name": "anyClusterRole", "expression": format!("{rbac}.resource('clusterroles').check('bind').allowed()")},
            ]),
            cluster_roles,
        ),
        binding("kubeconfig-authority-cluster-roles"),
        policy(
            "kubeconfig-authority-role-bindings",
            "Only who may bind a role in a namespace may have a Kubeconfig bind it there.",
            json!([
                {"name": "roleBindings", "expression": format!(
                    "{authorization} && has(object.spec.authorization.roleBindings) ? object.spec.authorization.roleBindings : []"
                )},
            ]),
            role_bindings,
        ),
        binding("kubeconfig-authority-role-bindings"),
        // A generator mints identities computed from objects that do not exist yet: only who
        // may impersonate any user and any group (and bind any ClusterRole, if it binds) may
        // write one.
        policy_for(
            "kubeconfiggenerators",
            "kubeconfig-authority-generators",
            "Only who may impersonate anyone may write a KubeconfigGenerator.",
            json!([]),
            vec![
                validation(
                    format!("{users}.check('impersonate').allowed() && {groups}.check('impersonate').allowed()"),
                    "'you may not write a KubeconfigGenerator: it can mint any identity, so it needs the verb impersonate on all users and all groups (no resourceNames)'".into(),
                ),
                validation(
                    format!("!has(object.spec.authorization) || {rbac}.resource('clusterroles').check('bind').allowed()"),
                    "'you may not write a KubeconfigGenerator that binds roles: that needs the verb bind on all clusterroles'".into(),
                ),
            ],
        ),
        binding("kubeconfig-authority-generators"),
        finalizer_guard(),
        binding("kubeconfig-authority-finalizer"),
        orphan_guard(),
        binding("kubeconfig-authority-orphan"),
    ]
}

/// Giving up on a target cluster (the annotation [`super::ORPHAN_TARGET_ANNOTATION`]) leaves
/// bindings there that nobody removes: only who may `orphan` kubeconfigs (a verb of this
/// project's own, which cluster-admin's `*` includes and the team roles do not) may set it.
fn orphan_guard() -> Value {
    let key = super::ORPHAN_TARGET_ANNOTATION;
    let set = |object: &str| {
        format!(
            "{object} != null && has({object}.metadata.annotations) && '{key}' in {object}.metadata.annotations && {object}.metadata.annotations['{key}'] == 'true'"
        )
    };
    guard(
        "kubeconfig-authority-orphan",
        "Only who may orphan kubeconfigs may give up on a target cluster.",
        "kubeconfigs",
        &["CREATE", "UPDATE"],
        json!([{
            "name": "orphan-set",
            "expression": format!("{} && !({})", set("object"), set("oldObject")),
        }]),
        vec![validation(
            format!(
                "authorizer.group('{}').resource('kubeconfigs').namespace(object.metadata.namespace).check('orphan').allowed()",
                super::GROUP
            ),
            format!(
                "'you may not set {key}: it leaves the bindings made in the target cluster behind; that needs the verb orphan on kubeconfigs (API group {}), which cluster admins have'",
                super::GROUP
            ),
        )],
    )
}

/// The controller's finalizer stands between a Kubeconfig and the removal of
/// what it made outside the garbage collector's reach (bindings, copies): only the controller
/// may take it off, after that cleanup. Any other update that drops it is refused.
fn finalizer_guard() -> Value {
    let has = |object: &str| {
        format!(
            "has({object}.metadata.finalizers) && {object}.metadata.finalizers.exists(f, f == '{}')",
            super::FINALIZER
        )
    };
    guard(
        "kubeconfig-authority-finalizer",
        "Only the controller may remove its finalizer, after removing what the object made.",
        "kubeconfigs",
        &["UPDATE"],
        json!([{
            "name": "finalizer-removed",
            "expression": format!("{} && !({})", has("oldObject"), has("object")),
        }, {
            "name": "not-the-controller",
            "expression": format!("request.userInfo.username != '{CONTROLLER_USER}'"),
        }]),
        vec![validation(
            "false".into(),
            format!(
                "'only the kubeconfig-authority controller may remove the finalizer {}: it does so once the bindings and copies the object made are gone; delete the object and the controller finishes. If the controller is uninstalled for good, delete the ValidatingAdmissionPolicyBinding kubeconfig-authority-finalizer first'",
                super::FINALIZER
            ),
        )],
    )
}

/// The policies as one multi-document YAML stream.
pub fn admission_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `kubeconfig-authority admission`; do not edit (a test checks it).\n",
    );
    for object in admission_objects() {
        out += "---\n";
        out += &serde_yaml::to_string(&object)?;
    }
    Ok(out)
}
