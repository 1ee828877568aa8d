//! The credential a Secret holds, as recorded beside it.

use base64::Engine;
use kubeconfig_authority_pki::CertificateInfo;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::api::CredentialId;

/// What a Secret holds, as far as renewal and status care. Recorded on the Secret as JSON in
/// `kubeconfig-authority.dev/credential`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    /// The certificate's serial number (hex), or the token's ID (`jti`).
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(rename = "token")]
    pub is_token: bool,
    /// When the controller received it (a signer back-dates `notBefore` for clock skew, and
    /// renewal counts the lifetime from issuance). Absent in records of older versions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub issued_at: Option<OffsetDateTime>,
    /// What the API server names the credential by in audit logs and `kubectl auth whoami`:
    /// `X509SHA256=<fingerprint>` or `JTI=<token ID>`. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "CredentialId::is_unknown")]
    pub credential_id: CredentialId,
}

impl Held {
    /// The moment the lifetime counts from: the issuance when recorded, else `notBefore`.
    pub fn issued_at(&self) -> OffsetDateTime {
        self.issued_at
            .unwrap_or(self.not_before)
            .clamp(self.not_before, self.not_after.max(self.not_before))
    }

    pub fn kind(&self) -> &'static str {
        if self.is_token {
            "token"
        } else {
            "certificate"
        }
    }
}

impl From<CertificateInfo> for Held {
    fn from(info: CertificateInfo) -> Self {
        Self {
            id: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
            is_token: false,
            issued_at: None,
            credential_id: info.credential_id.into(),
        }
    }
}

/// The times and ID of a ServiceAccount token, from its claims (the token is not verified:
/// it is the one the API server gave this controller).
pub fn token_held(token: &str) -> Option<Held> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let time = |name: &str| {
        claims[name]
            .as_i64()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
    };
    let jti = claims["jti"].as_str().unwrap_or_default().to_string();
    Some(Held {
        credential_id: if jti.is_empty() {
            CredentialId::Unknown
        } else {
            CredentialId::Other(format!("JTI={jti}"))
        },
        id: jti,
        not_before: time("nbf").or_else(|| time("iat"))?,
        not_after: time("exp")?,
        is_token: true,
        issued_at: None,
    })
}

/// The secret half of a new credential. No `Debug`: it must never be printed.
pub enum IssuedCredential {
    Certificate {
        certificate_pem: String,
        private_key_pem: String,
    },
    Token(String),
}

/// A new credential.
pub struct Issued {
    pub credential: IssuedCredential,
    pub held: Held,
    /// Something the person should know (the validity was cut short).
    pub note: Option<String>,
}

/// A CSR waiting for its certificate, with the key that stays in memory. No `Debug`: it
/// holds a private key.
pub struct PendingCsr {
    pub name: String,
    pub private_key_pem: String,
    pub inputs_digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_claims_give_the_lifetime_and_id() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iat":1700000000,"exp":1700000600,"jti":"abc"}"#);
        let held = token_held(&format!("eyJhbGciOiJSUzI1NiJ9.{claims}.sig")).unwrap();
        assert_eq!(held.id, "abc");
        assert_eq!((held.not_after - held.not_before).whole_seconds(), 600);
        assert!(held.is_token);
        assert!(token_held("not-a-token").is_none());
        assert!(token_held("a.b.c").is_none());
    }
}
