//! A certificate authority loaded from PEM, and the client certificates it issues.

use std::{fmt, time::Duration};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, PublicKeyData,
    SerialNumber, SignatureAlgorithm, SigningKey,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Identity, KeyAlgorithm, PrivateKey, Result, pem_util};

/// How far back `notBefore` is set, so that a client whose clock is a little behind the API
/// server's still accepts a certificate issued this second.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A CA certificate with its private key, checked to belong together and to be able to sign.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, Deferred>,
    key: rcgen::KeyPair,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key", &crate::key::signature_name(self.key.algorithm()))
            .finish_non_exhaustive()
    }
}

/// A freshly issued client certificate and its private key (PEM). `Debug` leaves the key out.
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// Lower-case hex, no separators: the way `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// True when the requested validity ran past the CA's own expiry and was cut to it.
    pub clamped_to_ca: bool,
    pub identity: Identity,
    /// The SHA-256 of the certificate: how the API server names it (see
    /// [`credential_id`](crate::credential_id)).
    pub fingerprint: [u8; 32],
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("clamped_to_ca", &self.clamped_to_ca)
            .finish_non_exhaustive()
    }
}

/// The identity and public key of a parsed certificate signing request.
pub struct CertificateRequest {
    pub identity: Identity,
    public_key: rcgen::PublicKey,
}

impl fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A new key and a certificate signing request for an identity, for a signer that is not
/// this process (the Kubernetes CSR API).
pub struct NewRequest {
    pub private_key_pem: String,
    pub request_pem: String,
}

impl fmt::Debug for NewRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRequest").finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// Generates a key of `algorithm` and a PKCS#10 request for `identity` (CN = username, one
    /// O per group, as Kubernetes reads them), signed with that key.
    pub fn create(identity: &Identity, algorithm: KeyAlgorithm) -> Result<NewRequest> {
        Self::create_with_key(identity, algorithm.generate()?)
    }

    /// [`create`](Self::create) with a key generated beforehand (for example by a pool that
    /// generates RSA keys ahead). The key is consumed: it serves one request.
    pub fn create_with_key(identity: &Identity, key: PrivateKey) -> Result<NewRequest> {
        use x509_cert::der::{Decode, Encode, asn1::BitString};
        let der_err =
            |e: x509_cert::der::Error| Error::Signing(format!("encoding the request: {e}"));
        let private_key_pem = key.to_pem();
        let key = key.into_pair()?;
        // rcgen lays out and signs a request with the CN alone; the subject is then replaced
        // with the full one and the request signed again.
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity.username.as_str());
        let draft = params
            .serialize_request(&key)
            .map_err(|e| Error::Signing(e.to_string()))?;
        let mut request = x509_cert::request::CertReq::from_der(draft.der()).map_err(der_err)?;
        request.info.subject = subject(identity)?;
        let info = request.info.to_der().map_err(der_err)?;
        let signature = key.sign(&info).map_err(|e| Error::Signing(e.to_string()))?;
        request.signature = BitString::from_bytes(&signature).map_err(der_err)?;
        let der = request.to_der().map_err(der_err)?;
        Ok(NewRequest {
            private_key_pem,
            request_pem: pem_util::encode("CERTIFICATE REQUEST", &der),
        })
    }

    /// Parses a PEM `CERTIFICATE REQUEST` and checks its self-signature. The identity (CN and
    /// every O) comes from the request; deciding whether it may be granted is the caller's job.
    pub fn from_pem(text: &str) -> Result<Self> {
        const EXPECTED: &str = "`CERTIFICATE REQUEST`";
        let blocks = pem_util::parse_blocks(text, EXPECTED)?;
        let block = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE REQUEST" || b.tag() == "NEW CERTIFICATE REQUEST")
            .ok_or_else(|| Error::WrongPemType {
                found: blocks[0].tag().to_string(),
                expected: EXPECTED,
            })?;
        let der = block.contents();
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der)
                .map_err(|e| Error::Csr(e.to_string()))?;
        parsed
            .verify_signature()
            .map_err(|e| Error::Csr(format!("its signature does not verify: {e}")))?;
        let subject = &parsed.certification_request_info.subject;
        let username = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| Error::Csr("the subject has no common name (the username)".into()))?;
        let groups: Vec<&str> = subject
            .iter_organization()
            .map(|o| {
                o.as_str()
                    .map_err(|e| Error::Csr(format!("an organization is not a string: {e}")))
            })
            .collect::<Result<_>>()?;
        let identity = Identity::new(username, groups)?;
        let params = rcgen::CertificateSigningRequestParams::from_der(&der.into())
            .map_err(|e| Error::Csr(format!("unsupported request: {e}")))?;
        Ok(Self {
            identity,
            public_key: params.public_key,
        })
    }
}

impl CertificateAuthority {
    /// Loads a CA from its certificate (PEM; a bundle may hold several certificates, and the one
    /// the key belongs to is used) and its private key (PEM, see [`PrivateKey::from_pem`]).
    /// Checks that the certificate is a CA allowed to sign, valid at `now`, and matches the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str, now: OffsetDateTime) -> Result<Self> {
        let key = PrivateKey::from_pem(key_pem)?;
        let certificates = pem_util::parse_certificates(cert_pem)?;
        let count = certificates.len();
        let mut found = None;
        for der in &certificates {
            let (_, cert) =
                X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
            if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
                found = Some(der);
                break;
            }
        }
        let der = found.ok_or(Error::KeyMismatch {
            certificates: count,
        })?;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
        let subject = cert.subject().to_string();
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| Error::Certificate(format!("basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(Error::NotCa { subject });
        }
        let key_usage = cert
            .key_usage()
            .map_err(|e| Error::Certificate(format!("keyUsage: {e}")))?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(Error::CannotSign { subject });
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        if now < not_before {
            return Err(Error::CaNotYetValid {
                subject,
                not_before,
            });
        }
        if now >= not_after {
            return Err(Error::CaExpired { subject, not_after });
        }
        let deferred = Deferred {
            public_key: key.public_key_raw().to_vec(),
            algorithm: PublicKeyData::algorithm(&key),
        };
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), deferred)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        Ok(Self {
            cert_pem: pem_util::encode(pem_util::CERTIFICATE, der),
            issuer,
            key: key.into_pair()?,
            subject,
            not_before,
            not_after,
        })
    }

    /// The CA certificate (just the one that signs), PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a client certificate for `identity` with a fresh key of `algorithm`, valid for
    /// `validity` from `now` (clamped to the CA's own expiry).
    pub fn issue(
        &self,
        identity: &Identity,
        algorithm: KeyAlgorithm,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate> {
        self.issue_with_key(identity, algorithm.generate()?, validity, now)
    }

    /// [`issue`](Self::issue) with a key generated beforehand (for example by a pool that
    /// generates RSA keys ahead). The key is consumed: it serves one certificate.
    pub fn issue_with_key(
        &self,
        identity: &Identity,
        key: PrivateKey,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate> {
        let signed = self.sign(identity, &key, key.is_rsa(), validity, now)?;
        Ok(IssuedCertificate {
            private_key_pem: key.to_pem(),
            ..signed
        })
    }

    /// Signs a certificate signing request with the same rules as [`issue`](Self::issue). The
    /// returned `private_key_pem` is empty: the key stays with the requester.
    pub fn sign_request(
        &self,
        request: &CertificateRequest,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate> {
        let is_rsa = request.public_key.algorithm() == &rcgen::PKCS_RSA_SHA256;
        self.sign(
            &request.identity,
            &request.public_key,
            is_rsa,
            validity,
            now,
        )
    }

    fn sign(
        &self,
        identity: &Identity,
        public_key: &impl PublicKeyData,
        is_rsa: bool,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate> {
        let signing = |e: String| Error::Signing(e);
        let requested_end = now + validity;
        let clamped_to_ca = requested_end > self.not_after;
        // Whole seconds, as the certificate records them.
        let seconds = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
        let not_after = seconds(requested_end.min(self.not_after));
        let not_before = seconds((now - CLOCK_SKEW).max(self.not_before));
        if not_after <= now {
            return Err(Error::CaExpired {
                subject: self.subject.clone(),
                not_after: self.not_after,
            });
        }

        let mut serial = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut serial)
            .map_err(|_| signing("the system random number generator failed".into()))?;
        // Positive, and a full 16 bytes long: 126 random bits.
        serial[0] = (serial[0] & 0x7f) | 0x40;

        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if is_rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;

        // rcgen keeps one value per attribute type in a subject, but Kubernetes reads every O as
        // a group. rcgen builds the certificate (extensions, key identifiers, serial), then the
        // subject is replaced with the full one and the TBS signed, with x509-cert's types.
        let draft = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| signing(e.to_string()))?;
        let der = with_subject(draft.der(), identity, &self.key)?;

        Ok(IssuedCertificate {
            certificate_pem: pem_util::encode(pem_util::CERTIFICATE, &der),
            private_key_pem: String::new(),
            serial: serial.iter().fold(String::new(), crate::inspect::hex),
            fingerprint: crate::fingerprint(&der),
            not_before,
            not_after,
            clamped_to_ca,
            identity: identity.clone(),
        })
    }
}

/// Stands in for the CA key while rcgen lays out a draft certificate: it has the CA key's public
/// half and algorithm, and leaves the signature empty (the final TBS is signed afterwards).
struct Deferred {
    public_key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for Deferred {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for Deferred {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

/// `O=<group>..., CN=<username>`, the order Go's crypto/x509 writes.
fn subject(identity: &Identity) -> Result<x509_cert::name::RdnSequence> {
    use const_oid::db::rfc4519::{CN, O};
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::der::asn1::{Any, SetOfVec, Utf8StringRef};
    use x509_cert::name::{RdnSequence, RelativeDistinguishedName};

    let der_err = |e: x509_cert::der::Error| Error::Signing(format!("encoding the subject: {e}"));
    let rdn = |oid, value: &str| -> Result<RelativeDistinguishedName> {
        let value =
            Any::encode_from(&Utf8StringRef::new(value).map_err(der_err)?).map_err(der_err)?;
        let set =
            SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }]).map_err(der_err)?;
        Ok(RelativeDistinguishedName(set))
    };
    let mut names = Vec::with_capacity(identity.groups.len() + 1);
    for group in &identity.groups {
        names.push(rdn(O, group)?);
    }
    names.push(rdn(CN, &identity.username)?);
    Ok(RdnSequence(names))
}

/// Replaces the subject of a draft certificate with the identity's and signs the result with
/// the CA key.
fn with_subject(draft: &[u8], identity: &Identity, ca_key: &rcgen::KeyPair) -> Result<Vec<u8>> {
    use x509_cert::der::{
        Decode, Encode,
        asn1::{AnyRef, BitString},
    };

    let der_err =
        |e: x509_cert::der::Error| Error::Signing(format!("encoding the certificate: {e}"));
    // Read as laid out, each part left encoded: Certificate ::= SEQUENCE { tbsCertificate,
    // signatureAlgorithm, signature }; the TBS's sixth field is the subject (RFC 5280 4.1).
    let parts = Vec::<AnyRef<'_>>::from_der(draft).map_err(der_err)?;
    let [tbs, algorithm, _] = parts.as_slice() else {
        return Err(Error::Signing(format!(
            "rcgen's draft certificate has {} parts, not 3",
            parts.len()
        )));
    };
    let mut fields = tbs.decode_as::<Vec<AnyRef<'_>>>().map_err(der_err)?;
    let subject = subject(identity)?.to_der().map_err(der_err)?;
    let Some(field) = fields.get_mut(5) else {
        return Err(Error::Signing(
            "rcgen's draft certificate has no subject".into(),
        ));
    };
    *field = AnyRef::from_der(&subject).map_err(der_err)?;
    let tbs = fields.to_der().map_err(der_err)?;
    let signature = ca_key
        .sign(&tbs)
        .map_err(|e| Error::Signing(e.to_string()))?;
    let signature = BitString::from_bytes(&signature)
        .and_then(|s| s.to_der())
        .map_err(der_err)?;
    let certificate = vec![
        AnyRef::from_der(&tbs).map_err(der_err)?,
        *algorithm,
        AnyRef::from_der(&signature).map_err(der_err)?,
    ];
    certificate.to_der().map_err(der_err)
}
