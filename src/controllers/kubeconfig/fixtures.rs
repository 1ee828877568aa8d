//! Shared fixtures of the Kubeconfig controller's unit tests.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kubeconfig_authority_pki::CertificateAuthority;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;
use time::OffsetDateTime;

use super::{
    request::{Credential, Desired},
    secret::build_secret,
};
use crate::{
    api::Kubeconfig,
    model::{
        authority::{Resolved, ResolvedSigner},
        credential::{Held, Issued, IssuedCredential},
    },
};

pub const UID: &str = "0b7e1c5e-0000-4000-8000-000000000001";

pub fn make_ca(name: &str) -> Arc<CertificateAuthority> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(30 * 86400);
    let cert = params.self_signed(&key).unwrap();
    Arc::new(CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem(), now).unwrap())
}

pub fn kubeconfig(spec: serde_json::Value) -> Kubeconfig {
    serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
        "metadata": {"name": "susan", "namespace": "team-a", "uid": UID, "generation": 2},
        "spec": spec,
    }))
    .unwrap()
}

pub fn base_spec() -> serde_json::Value {
    json!({"username": "susan", "groups": ["dev"], "validity": "24h", "secretRef": {"name": "susan-kubeconfig"}})
}

pub fn resolved(ca: &Arc<CertificateAuthority>) -> Resolved {
    Resolved {
        server: "https://api.example:6443".into(),
        server_ca_pem: ca.certificate_pem().into(),
        signer: ResolvedSigner::Ca(ca.clone()),
        target: None,
    }
}

/// Issues and builds the Secret the controller would write.
pub fn written(
    kc: &Kubeconfig,
    desired: &Desired,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Secret {
    let Credential::Certificate {
        identity,
        algorithm,
    } = &desired.credential
    else {
        panic!("a certificate")
    };
    let issued = ca
        .issue(identity, *algorithm, desired.validity, now)
        .unwrap();
    let issued = Issued {
        held: Held {
            id: issued.serial,
            credential_id: crate::api::CredentialId::Certificate(issued.fingerprint),
            not_before: issued.not_before,
            not_after: issued.not_after,
            is_token: false,
            issued_at: Some(now),
        },
        note: None,
        credential: IssuedCredential::Certificate {
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
        },
    };
    build_secret(kc, UID, desired, &issued, ca.certificate_pem()).unwrap()
}
