//! The Kubeconfig's Secret: what to do with the one observed, and the one to write. Pure.

use crate::api::RENEW_ANNOTATION;
use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;
use kubeconfig_authority_pki::{
    kubeconfig::{self as kc_file, Credential as FileCredential, KubeconfigSpec as FileSpec},
    renewal_time,
};
use time::OffsetDateTime;

use super::request::{Credential, Desired};
use crate::model::labels::{owned_labels, owner_annotation, owner_reference};
use crate::{
    api::{CREDENTIAL_ANNOTATION, DATA_ANNOTATION, INPUTS_ANNOTATION, Kubeconfig},
    model::{
        Problem, Reason, Result,
        credential::{Held, Issued, IssuedCredential},
        managed::{self, ManagedSecret},
    },
};

/// Why a new credential is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// There is no Secret yet.
    Issue,
    /// The credential is due for renewal (or expired).
    Renew,
    /// The Secret was edited or damaged.
    Repair,
    /// The spec, the authority or its CA changed.
    Reissue,
}

impl WriteReason {
    /// The Ready reason (and event reason) after such a write.
    pub fn reason(self) -> Reason {
        match self {
            Self::Issue => Reason::Issued,
            Self::Renew => Reason::Renewed,
            Self::Repair => Reason::Repaired,
            Self::Reissue => Reason::Reissued,
        }
    }
}

/// What to do with the Secret.
#[derive(Debug)]
pub enum SecretPlan {
    /// It holds a good credential, due for renewal at the given time.
    Keep {
        held: Held,
        renew_at: OffsetDateTime,
    },
    Write(WriteReason, String),
    /// A copy another Kubeconfig (named) distributed holds the name: deleted, then written.
    ReplaceCopy(String),
    /// A Secret of that name exists and is not ours: never overwritten.
    Conflict(Problem),
}

/// Decides what to do with the observed Secret. Pure.
pub fn plan_secret(
    desired: &Desired,
    uid: &str,
    observed: Option<&ManagedSecret>,
    now: OffsetDateTime,
) -> SecretPlan {
    let Some(secret) = observed else {
        return SecretPlan::Write(WriteReason::Issue, "no Secret yet".into());
    };
    let copy_of_another = secret.controller_uid.is_none()
        && secret.kubeconfig_uid.is_some()
        && !managed::is_uid(secret.kubeconfig_uid, uid);
    if copy_of_another {
        // A copy another Kubeconfig distributed here never takes a name a Kubeconfig of this
        // namespace refers to (`distribution`): it goes, and this one's Secret takes its place.
        return SecretPlan::ReplaceCopy(secret.kubeconfig.clone().unwrap_or_default());
    }
    if !managed::is_uid(secret.controller_uid, uid) {
        return SecretPlan::Conflict(Problem::new(
            Reason::SecretConflict,
            format!(
                "Secret {} exists and is not managed by this Kubeconfig; it is left untouched: delete it or set another spec.secretRef.name",
                secret.name
            ),
        ));
    }
    if !secret
        .inputs_digest
        .is_some_and(|d| d.is(&desired.inputs_digest))
    {
        return SecretPlan::Write(
            WriteReason::Reissue,
            "the spec, the authority or its CA changed".into(),
        );
    }
    if !secret.intact {
        return SecretPlan::Write(WriteReason::Repair, "the Secret's data was edited".into());
    }
    let held = secret
        .held
        .clone()
        .filter(|held| held.is_token == matches!(desired.credential, Credential::Token { .. }));
    let Some(held) = held else {
        return SecretPlan::Write(
            WriteReason::Repair,
            "the Secret holds no readable kubeconfig".into(),
        );
    };
    if let Some(asked) = &desired.renew_requested {
        return SecretPlan::Write(
            WriteReason::Renew,
            format!("a renewal was requested ({RENEW_ANNOTATION}: {asked})"),
        );
    }
    let renew_at = renewal_time(held.issued_at(), held.not_after, desired.renew_before, uid);
    if now >= renew_at || now >= held.not_after || now < held.not_before {
        return SecretPlan::Write(
            WriteReason::Renew,
            format!("the {} expires at {}", held.kind(), held.not_after),
        );
    }
    SecretPlan::Keep { held, renew_at }
}

/// The key of the Secret's first kubeconfig.
pub fn first_key(desired: &Desired) -> &str {
    desired
        .kubeconfig_keys
        .first()
        .map(String::as_str)
        .unwrap_or("kubeconfig")
}

/// The Secret holding a freshly issued credential. Pure.
pub fn build_secret(
    kc: &Kubeconfig,
    uid: &str,
    desired: &Desired,
    issued: &Issued,
    ca_pem: &str,
) -> Result<Secret, Problem> {
    let namespace = kc.namespace().unwrap_or_default();
    let context = format!("{}@{}", desired.user_name, namespace);
    let credential = match &issued.credential {
        IssuedCredential::Certificate {
            certificate_pem,
            private_key_pem,
        } => FileCredential::ClientCertificate {
            certificate_pem,
            private_key_pem,
        },
        IssuedCredential::Token(token) => FileCredential::Token(token),
    };
    let yaml = kc_file::render(&FileSpec {
        cluster_name: "cluster",
        user_name: &desired.user_name,
        context_name: &context,
        server: &desired.server,
        certificate_authority_pem: Some(&desired.server_ca_pem),
        namespace: None,
        credential,
    })
    .map_err(|e| Problem::new(Reason::InvalidAuthority, e.to_string()))?;
    let mut data = BTreeMap::new();
    for key in &desired.kubeconfig_keys {
        data.insert(key.clone(), ByteString(yaml.clone().into_bytes()));
    }
    if let (
        true,
        IssuedCredential::Certificate {
            certificate_pem,
            private_key_pem,
        },
    ) = (desired.certificate_keys, &issued.credential)
    {
        data.insert(
            "tls.crt".into(),
            ByteString(certificate_pem.clone().into_bytes()),
        );
        data.insert(
            "tls.key".into(),
            ByteString(private_key_pem.clone().into_bytes()),
        );
        data.insert("ca.crt".into(), ByteString(ca_pem.as_bytes().to_vec()));
    }
    let mut secret = secret_shell(kc, uid, &desired.secret_name);
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    let record = serde_json::to_string(&issued.held).map_err(|e| {
        Problem::new(
            Reason::InvalidAuthority,
            format!("recording the credential: {e}"),
        )
    })?;
    annotations.insert(INPUTS_ANNOTATION.into(), desired.inputs_digest.clone());
    annotations.insert(
        DATA_ANNOTATION.into(),
        managed::digest_of(&data, Some(&record)).to_string(),
    );
    annotations.insert(CREDENTIAL_ANNOTATION.into(), record);
    secret.data = Some(data);
    Ok(secret)
}

/// The Secret's metadata (name, labels, owner) without data: what exists before a token bound
/// to it can be requested.
pub fn secret_shell(kc: &Kubeconfig, uid: &str, name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: kc.namespace(),
            labels: Some(owned_labels(uid)),
            annotations: Some(owner_annotation(kc)),
            owner_references: Some(vec![owner_reference(kc, uid)]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// Whether writing `desired` over `live` leaves out a data key, label, annotation or owner the
/// live Secret has: only then can the fields a create wrote stand in the way of an apply (see
/// `client::adoption_patch`). Someone else's key counts too (their fields are theirs
/// whatever is done); adopting the controller's own fields once more is harmless. Pure.
pub fn leaves_out(live: &Secret, desired: &Secret) -> bool {
    fn all_in<V, W>(
        live: Option<&BTreeMap<String, V>>,
        desired: Option<&BTreeMap<String, W>>,
    ) -> bool {
        live.into_iter()
            .flatten()
            .all(|(key, _)| desired.is_some_and(|d| d.contains_key(key)))
    }
    let (l, d) = (&live.metadata, &desired.metadata);
    let owners_kept = live
        .owner_references()
        .iter()
        .all(|o| desired.owner_references().iter().any(|k| k.uid == o.uid));
    !(all_in(live.data.as_ref(), desired.data.as_ref())
        && all_in(l.labels.as_ref(), d.labels.as_ref())
        && all_in(l.annotations.as_ref(), d.annotations.as_ref())
        && owners_kept)
}

/// A Secret's data.
pub type SecretData = BTreeMap<String, ByteString>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KUBECONFIG_UID_LABEL;
    use crate::controllers::kubeconfig::fixtures::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn a_write_leaves_out_what_the_live_secret_has_and_it_does_not() {
        let ca = make_ca("a");
        let kc = kubeconfig(base_spec());
        let desired = Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap();
        let now = OffsetDateTime::now_utc();
        let secret = written(&kc, &desired, &ca, now);
        assert!(!leaves_out(&secret, &secret));
        let mut fewer = secret.clone();
        fewer.data.as_mut().unwrap().remove("tls.key");
        assert!(leaves_out(&secret, &fewer));
        assert!(
            !leaves_out(&fewer, &secret),
            "a key added is no key left out"
        );
        let mut labelled = secret.clone();
        labelled.labels_mut().insert("team".into(), "a".into());
        assert!(leaves_out(&labelled, &secret));
        let mut annotated = secret.clone();
        annotated
            .annotations_mut()
            .insert("note".into(), "b".into());
        assert!(leaves_out(&annotated, &secret));
        let mut owned = secret.clone();
        owned.owner_references_mut()[0].uid = "another".into();
        assert!(leaves_out(&owned, &secret));
        let mut bare = secret.clone();
        bare.data = None;
        assert!(leaves_out(&secret, &bare) && !leaves_out(&bare, &secret));
    }

    #[test]
    fn the_secret_plan_follows_what_was_observed() {
        let ca = make_ca("a");
        let kc = kubeconfig(base_spec());
        let desired = Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap();
        let now = OffsetDateTime::now_utc();
        let plan = |desired: &Desired, uid: &str, secret: &Secret, at: OffsetDateTime| {
            plan_secret(
                desired,
                uid,
                Some(&ManagedSecret::of(secret, Some("kubeconfig"))),
                at,
            )
        };
        assert!(matches!(
            plan_secret(&desired, UID, None, now),
            SecretPlan::Write(WriteReason::Issue, _)
        ));

        let secret = written(&kc, &desired, &ca, now);
        let SecretPlan::Keep { renew_at, held } = plan(&desired, UID, &secret, now) else {
            panic!("a fresh Secret is kept")
        };
        assert!(!held.is_token && held.not_after > now + Duration::from_secs(23 * 3600));
        assert!(
            renew_at > now + Duration::from_secs(15 * 3600)
                && renew_at <= now + Duration::from_secs(16 * 3600 + 300)
        );
        assert!(
            matches!(held.credential_id, crate::api::CredentialId::Certificate(_)),
            "{:?}",
            held.credential_id
        );
        // A renewal asked for (and not yet done) renews a good credential.
        let asked = Desired {
            renew_requested: Some("2026-11-30T08:00:00Z".into()),
            ..Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap()
        };
        assert!(matches!(
            plan(&asked, UID, &secret, now),
            SecretPlan::Write(WriteReason::Renew, why) if why.contains("2026-11-30T08:00:00Z")
        ));
        // The cache keeps no data, and plans the same.
        let cached = ManagedSecret::from(secret.clone());
        assert!(cached.intact && cached.held.as_ref() == Some(&held));
        assert!(matches!(
            plan_secret(&desired, UID, Some(&cached), renew_at),
            SecretPlan::Write(WriteReason::Renew, _)
        ));

        // Due: renew.
        assert!(matches!(
            plan(&desired, UID, &secret, renew_at),
            SecretPlan::Write(WriteReason::Renew, _)
        ));
        // Edited data: repair.
        let mut edited = secret.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(b"x".to_vec()));
        assert!(matches!(
            plan(&desired, UID, &edited, now),
            SecretPlan::Write(WriteReason::Repair, _)
        ));
        // An edited credential record (say, a later expiry): repair, as for the data.
        let mut extended = secret.clone();
        let record = extended
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .get_mut(CREDENTIAL_ANNOTATION)
            .unwrap();
        *record = record.replace(&held.not_after.year().to_string(), "2999");
        assert!(matches!(
            plan(&desired, UID, &extended, now),
            SecretPlan::Write(WriteReason::Repair, _)
        ));
        // Written before there was a record: the credential is read from the data; the cache
        // (no data) asks for the live Secret.
        let mut unrecorded = secret.clone();
        let annotations = unrecorded.metadata.annotations.as_mut().unwrap();
        annotations.remove(CREDENTIAL_ANNOTATION);
        let digest = managed::digest_of(unrecorded.data.as_ref().unwrap(), None);
        unrecorded
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DATA_ANNOTATION.into(), digest.to_string());
        let SecretPlan::Keep { held: read, .. } = plan(&desired, UID, &unrecorded, now) else {
            panic!("an unrecorded Secret is kept")
        };
        // The certificate says nothing of when it was received.
        assert_eq!(
            read,
            Held {
                issued_at: None,
                ..held.clone()
            }
        );
        assert!(matches!(
            plan_secret(&desired, UID, Some(&ManagedSecret::from(unrecorded)), now),
            SecretPlan::Write(WriteReason::Repair, _)
        ));
        // Another CA, or another spec: reissue.
        let other = Desired::from_spec(&kc, UID, &resolved(&make_ca("b"))).unwrap();
        assert!(matches!(
            plan(&other, UID, &secret, now),
            SecretPlan::Write(WriteReason::Reissue, _)
        ));
        let mut spec = base_spec();
        spec["groups"] = json!(["dev", "ops"]);
        let regrouped = Desired::from_spec(&kubeconfig(spec), UID, &resolved(&ca)).unwrap();
        assert!(matches!(
            plan(&regrouped, UID, &secret, now),
            SecretPlan::Write(WriteReason::Reissue, _)
        ));
        // Someone else's Secret, or one of an older object of the same name: never touched.
        let mut foreign = secret.clone();
        foreign.metadata.owner_references = None;
        assert!(matches!(
            plan(&desired, UID, &foreign, now),
            SecretPlan::Conflict(_)
        ));
        assert!(matches!(
            plan(&desired, "another-uid", &secret, now),
            SecretPlan::Conflict(_)
        ));
    }

    #[test]
    fn the_secret_holds_an_inline_kubeconfig_under_each_key() {
        let ca = make_ca("a");
        let mut spec = base_spec();
        spec["secretRef"] =
            json!({"name": "s", "kubeconfigKeys": ["config"], "certificateKeys": false});
        let kc = kubeconfig(spec);
        let desired = Desired::from_spec(&kc, UID, &resolved(&ca)).unwrap();
        let secret = written(&kc, &desired, &ca, OffsetDateTime::now_utc());
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["config"]);
        let parsed = kc_file::parse(std::str::from_utf8(&data["config"].0).unwrap()).unwrap();
        assert_eq!(parsed.server, "https://api.example:6443");
        assert!(parsed.client_key_pem.is_some() && parsed.certificate_authority_pem.is_some());
        assert_eq!(secret.labels()[KUBECONFIG_UID_LABEL], UID);
        assert_eq!(secret.owner_references()[0].uid, UID);
    }
}
