//! The control plane the other tests stand on is real: certificates from its CA authenticate,
//! RBAC decides, foreign certificates are refused, and the TokenRequest API works.

use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::{SelfSubjectReview, TokenRequest},
    core::v1::{Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;

use crate::support::{self, client_from_kubeconfig};

/// Who the API server says a client is.
pub async fn whoami(client: kube::Client) -> (String, Vec<String>) {
    let review: SelfSubjectReview = serde_json::from_value(json!({})).unwrap();
    let answer = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectReview");
    let user = answer.status.and_then(|s| s.user_info).expect("userInfo");
    (
        user.username.unwrap_or_default(),
        user.groups.unwrap_or_default(),
    )
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn certificates_from_the_test_ca_authenticate_and_rbac_decides() {
    let plane = support::shared();
    let ns = plane.namespace("rbac").await;
    let alice = plane.client_for("alice", &["dev"]).await;
    assert_eq!(
        whoami(alice.clone()).await,
        (
            "alice".into(),
            vec!["dev".into(), "system:authenticated".into()]
        )
    );

    let secrets = Api::<Secret>::namespaced(alice.clone(), &ns);
    let denied = secrets
        .list(&ListParams::default())
        .await
        .expect_err("alice may not list secrets yet");
    assert_eq!(status_code(&denied), Some(403), "{denied}");

    let admin = plane.admin().await;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "secret-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "alice-reads-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    })).unwrap();
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The authorizer's cache follows within a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match secrets.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if status_code(&e) == Some(403) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("alice still cannot list secrets: {e}"),
        }
    }
    // Listing secrets elsewhere is still refused.
    let elsewhere = Api::<Secret>::namespaced(alice, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&elsewhere), Some(403));
}

#[tokio::test]
async fn the_admission_apis_of_a_normal_cluster_are_served() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
    let admin = support::shared().admin().await;
    Api::<ValidatingAdmissionPolicy>::all(admin)
        .list(&ListParams::default())
        .await
        .expect("ValidatingAdmissionPolicy is served");
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused() {
    let plane = support::shared();
    let other = support::TestCa::new("kubeconfig-authority-test-ca");
    let kubeconfig = other.kubeconfig_for(
        &plane.server,
        &plane.ca_cert_pem,
        "mallory",
        &["system:masters"],
    );
    let client = client_from_kubeconfig(&kubeconfig).await;
    let review: SelfSubjectReview = serde_json::from_value(json!({})).unwrap();
    let err = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(401), "{err}");
}

#[tokio::test]
async fn token_requests_return_tokens_that_authenticate_as_the_service_account() {
    let plane = support::shared();
    let ns = plane.namespace("tokens").await;
    let admin = plane.admin().await;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "flux"}})).unwrap();
    let accounts = Api::<ServiceAccount>::namespaced(admin, &ns);
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}}))
            .unwrap();
    let answer = accounts
        .create_token_request("flux", &PostParams::default(), &request)
        .await
        .unwrap();
    let status = answer.status.expect("token status");
    assert!(status.expiration_timestamp.0 > jiff_now_plus(Duration::from_secs(500)));
    let kubeconfig = kubeconfig_authority_pki::kubeconfig::render(
        &kubeconfig_authority_pki::kubeconfig::KubeconfigSpec {
            cluster_name: "test",
            user_name: "flux",
            context_name: "test",
            server: &plane.server,
            certificate_authority_pem: Some(&plane.ca_cert_pem),
            namespace: None,
            credential: kubeconfig_authority_pki::kubeconfig::Credential::Token(&status.token),
        },
    )
    .unwrap();
    let (user, groups) = whoami(client_from_kubeconfig(&kubeconfig).await).await;
    assert_eq!(user, format!("system:serviceaccount:{ns}:flux"));
    assert!(
        groups.contains(&format!("system:serviceaccounts:{ns}")),
        "{groups:?}"
    );
}

fn jiff_now_plus(d: Duration) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now() + d
}
