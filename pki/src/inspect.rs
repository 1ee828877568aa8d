//! What a certificate says: who, issued by whom, valid when, and whether a CA bundle vouches
//! for it.

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Identity, Result};

/// The facts of one certificate that matter to a kubeconfig's holder.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject CN as username, subject O as groups.
    pub identity: Identity,
    /// Lower-case hex, no separators.
    pub serial: String,
    pub issuer: String,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// What the API server names it by in audit logs and `kubectl auth whoami`
    /// (`authentication.kubernetes.io/credential-id`): see [`credential_id`].
    pub credential_id: String,
}

impl CertificateInfo {
    /// Time left at `now`; zero once expired.
    pub fn time_left(&self, now: OffsetDateTime) -> std::time::Duration {
        (self.not_after - now).try_into().unwrap_or_default()
    }

    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Reads a DER certificate.
pub fn inspect_certificate(der: &[u8]) -> Result<CertificateInfo> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
    let subject = cert.subject();
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str()
            .map(str::to_string)
            .unwrap_or_else(|_| "<not a string>".into())
    };
    let username = subject
        .iter_common_name()
        .next()
        .map(text)
        .unwrap_or_default();
    let groups = subject.iter_organization().map(text).collect();
    Ok(CertificateInfo {
        identity: Identity { username, groups },
        serial: cert
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .fold(String::new(), hex),
        issuer: cert.issuer().to_string(),
        subject: subject.to_string(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
        credential_id: credential_id(der),
    })
}

/// How the API server identifies a client certificate in audit logs and in the user's extra
/// `authentication.kubernetes.io/credential-id`: `X509SHA256=` and the SHA-256 of its DER, in
/// lower-case hex.
pub fn credential_id(der: &[u8]) -> String {
    fingerprint(der)
        .iter()
        .fold(String::from("X509SHA256="), hex)
}

/// The SHA-256 of a certificate's DER: the bytes of its [`credential_id`].
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    bytes
}

/// `text` with `byte` appended in lower-case hex, for folding bytes into a string.
pub(crate) fn hex(mut text: String, byte: &u8) -> String {
    use std::fmt::Write;
    let _ = write!(text, "{byte:02x}");
    text
}

/// Whether a certificate was signed by one of the certificates of a CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Verification {
    /// Signed by the bundle's certificate with this subject, which was valid at the time asked.
    Verified { by: String },
    /// Not signed by any certificate of the bundle, or the signer is not valid now.
    NotVerified { reason: String },
}

/// Checks `der` against every certificate of `bundle` (DER): the issuer name matches, the
/// signature verifies with that CA's public key, and the CA is a valid CA at `now`.
pub fn verify_against(der: &[u8], bundle: &[Vec<u8>], now: OffsetDateTime) -> Result<Verification> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
    let mut reason = "no certificate in the CA bundle issued it".to_string();
    for ca_der in bundle {
        let (_, ca) =
            X509Certificate::from_der(ca_der).map_err(|e| Error::Certificate(e.to_string()))?;
        if ca.subject() != cert.issuer() {
            continue;
        }
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            reason = format!(
                "the signature does not verify with the key of {}",
                ca.subject()
            );
            continue;
        }
        let from = ca.validity().not_before.to_datetime();
        let until = ca.validity().not_after.to_datetime();
        if !ca.is_ca() {
            reason = format!("its issuer {} is not a CA", ca.subject());
        } else if now < from || now >= until {
            reason = format!(
                "its issuer {} is not valid now (valid {from} to {until})",
                ca.subject()
            );
        } else {
            return Ok(Verification::Verified {
                by: ca.subject().to_string(),
            });
        }
    }
    Ok(Verification::NotVerified { reason })
}
