//! Private keys: generation for leaf certificates, and loading of CA keys in every format the
//! field writes (PKCS#8, PKCS#1 `RSA PRIVATE KEY` as kubeadm writes it, SEC1 `EC PRIVATE KEY`).
//!
//! rcgen on ring loads only PKCS#8, so PKCS#1 and SEC1 keys are converted with the RustCrypto
//! crates first. ring cannot generate RSA keys; the `rsa` crate does, and hands over PKCS#8.

use std::{fmt, str::FromStr};

use pkcs8::{AssociatedOid, EncodePrivateKey};
use rcgen::{KeyPair, SignatureAlgorithm};

use crate::{Error, Result, pem_util};

/// The algorithms a leaf key can be generated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256: fast, small, accepted everywhere. The default.
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 6] = [
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::Ed25519,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
    ];

    /// The command-line name: `ecdsa-p256`, `rsa-2048`, `ed25519`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// From the cert-manager style pair (`algorithm: ECDSA|RSA|Ed25519`, `size`), with the
    /// usual defaults (ECDSA 256, RSA 2048).
    pub fn from_parts(algorithm: &str, size: Option<u32>) -> Result<Self> {
        let unsupported = || {
            Error::UnsupportedAlgorithm(format!(
                "{algorithm} with size {}; use ECDSA 256 or 384, RSA 2048, 3072 or 4096, or Ed25519",
                size.map_or("(default)".into(), |s| s.to_string())
            ))
        };
        match (algorithm.to_ascii_lowercase().as_str(), size) {
            ("ecdsa", None | Some(256)) => Ok(Self::EcdsaP256),
            ("ecdsa", Some(384)) => Ok(Self::EcdsaP384),
            ("rsa", None | Some(2048)) => Ok(Self::Rsa2048),
            ("rsa", Some(3072)) => Ok(Self::Rsa3072),
            ("rsa", Some(4096)) => Ok(Self::Rsa4096),
            ("ed25519", None) => Ok(Self::Ed25519),
            _ => Err(unsupported()),
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }

    /// Generates a fresh key pair.
    pub fn generate(self) -> Result<PrivateKey> {
        let signing =
            |e: &dyn fmt::Display| Error::Signing(format!("generating a {self} key: {e}"));
        let rng = ring::rand::SystemRandom::new();
        let generated = |pkcs8: &[u8], algorithm| {
            PrivateKey::generated(pkcs8, algorithm)
                .ok_or_else(|| signing(&"ring's PKCS#8 holds no public key"))
        };
        match self {
            Self::EcdsaP256 | Self::EcdsaP384 => {
                use ring::signature::{
                    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
                };
                let (curve, algorithm) = match self {
                    Self::EcdsaP256 => (
                        &ECDSA_P256_SHA256_ASN1_SIGNING,
                        &rcgen::PKCS_ECDSA_P256_SHA256,
                    ),
                    _ => (
                        &ECDSA_P384_SHA384_ASN1_SIGNING,
                        &rcgen::PKCS_ECDSA_P384_SHA384,
                    ),
                };
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(curve, &rng).map_err(|e| signing(&e))?;
                generated(pkcs8.as_ref(), algorithm)
            }
            Self::Ed25519 => {
                let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|e| signing(&e))?;
                generated(pkcs8.as_ref(), &rcgen::PKCS_ED25519)
            }
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => {
                use aws_lc_rs::{
                    encoding::{AsDer, Pkcs8V1Der},
                    rsa::{KeyPair as RsaKeyPair, KeySize},
                };
                let size = match self {
                    Self::Rsa2048 => KeySize::Rsa2048,
                    Self::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                let key = RsaKeyPair::generate(size).map_err(|e| signing(&e))?;
                let pkcs8: Pkcs8V1Der = key.as_der().map_err(|e| signing(&e))?;
                Ok(PrivateKey::from(pkcs8_to_rsa_key_pair(pkcs8.as_ref())?))
            }
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
                Error::UnsupportedAlgorithm(format!("{s:?}; use one of {}", names.join(", ")))
            })
    }
}

/// A private key with its public half. Its `Debug` output shows the algorithm only.
pub struct PrivateKey(Form);

enum Form {
    /// Loaded or converted: ready to sign (boxed: ring's state is several times the size of
    /// the other form).
    Pair(Box<KeyPair>),
    /// Generated here for a certificate someone else signs: the PKCS#8 document and the public
    /// key read from it. Making it ready to sign would derive the public key again from the
    /// private one, a third of what generating a P-256 key costs (`make bench`); a key that
    /// signs (a certificate request's) is made ready when it does.
    Generated {
        pkcs8: Vec<u8>,
        public: Vec<u8>,
        algorithm: &'static SignatureAlgorithm,
    },
}

impl From<KeyPair> for PrivateKey {
    fn from(pair: KeyPair) -> Self {
        Self(Form::Pair(Box::new(pair)))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &signature_name(self.algorithm()))
            .finish_non_exhaustive()
    }
}

/// The public half as a certificate carries it (what rcgen signs for).
impl rcgen::PublicKeyData for PrivateKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_key_raw()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PrivateKey::algorithm(self)
    }
}

impl PrivateKey {
    /// Loads a private key from PEM: `PRIVATE KEY` (PKCS#8: RSA, ECDSA P-256/P-384, Ed25519),
    /// `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1, P-256 or P-384). Other blocks in the
    /// text (for example a certificate) are skipped.
    pub fn from_pem(text: &str) -> Result<Self> {
        const EXPECTED: &str = "`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`";
        let blocks = pem_util::parse_blocks(text, EXPECTED)?;
        let Some(block) = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) else {
            return Err(Error::WrongPemType {
                found: blocks[0].tag().to_string(),
                expected: EXPECTED,
            });
        };
        let der = block.contents();
        let pair = match block.tag() {
            "PRIVATE KEY" => KeyPair::try_from(der).map_err(|e| Error::Key {
                format: "PKCS#8",
                reason: format!("{e} (supported: RSA, ECDSA P-256/P-384, Ed25519)"),
            })?,
            "RSA PRIVATE KEY" => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                let key = rsa::RsaPrivateKey::from_pkcs1_der(der).map_err(|e| Error::Key {
                    format: "PKCS#1 RSA",
                    reason: e.to_string(),
                })?;
                rsa_to_key_pair(&key)?
            }
            "EC PRIVATE KEY" => sec1_to_key_pair(der)?,
            "ENCRYPTED PRIVATE KEY" => return Err(Error::EncryptedKey),
            other => {
                return Err(Error::WrongPemType {
                    found: other.to_string(),
                    expected: EXPECTED,
                });
            }
        };
        Ok(Self::from(pair))
    }

    /// A key ring generated: its PKCS#8 document (version 1 with the public key in the
    /// ECPrivateKey for ECDSA, version 2 for Ed25519). None if the document holds no public key.
    fn generated(pkcs8: &[u8], algorithm: &'static SignatureAlgorithm) -> Option<Self> {
        let info = pkcs8::PrivateKeyInfo::try_from(pkcs8).ok()?;
        let public = match info.public_key {
            Some(public) => public,
            None => {
                sec1::EcPrivateKey::try_from(info.private_key)
                    .ok()?
                    .public_key?
            }
        };
        Some(Self(Form::Generated {
            public: public.to_vec(),
            pkcs8: pkcs8.to_vec(),
            algorithm,
        }))
    }

    /// The key ready to sign.
    pub(crate) fn into_pair(self) -> Result<KeyPair> {
        match self.0 {
            Form::Pair(pair) => Ok(*pair),
            Form::Generated { pkcs8, .. } => {
                KeyPair::try_from(pkcs8.as_slice()).map_err(|e| Error::Key {
                    format: "PKCS#8",
                    reason: e.to_string(),
                })
            }
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match &self.0 {
            Form::Pair(pair) => pair.algorithm(),
            Form::Generated { algorithm, .. } => algorithm,
        }
    }

    /// The key's PKCS#8 document, as made.
    fn pkcs8(&self) -> &[u8] {
        match &self.0 {
            Form::Pair(pair) => pair.serialized_der(),
            Form::Generated { pkcs8, .. } => pkcs8,
        }
    }

    /// The key as PKCS#8 PEM, the format written into kubeconfigs and `tls.key`.
    /// PKCS#8 PEM. Ed25519 keys are written as version 1 (RFC 8410 without the optional
    /// public key): ring makes version 2 documents, which OpenSSL before 3.5 (Python's `ssl`,
    /// curl, current Debian and Ubuntu) cannot read.
    pub fn to_pem(&self) -> String {
        let der = self.pkcs8();
        let v1 = pkcs8::PrivateKeyInfo::try_from(der)
            .ok()
            .filter(|info| info.public_key.is_some())
            .and_then(|mut info| {
                info.public_key = None;
                pkcs8::der::Encode::to_der(&info).ok()
            });
        pem_util::encode("PRIVATE KEY", v1.as_deref().unwrap_or(der))
    }

    /// The raw public key, as it appears in a certificate's subjectPublicKey bit string.
    pub fn public_key_raw(&self) -> &[u8] {
        match &self.0 {
            Form::Pair(pair) => pair.public_key_raw(),
            Form::Generated { public, .. } => public,
        }
    }

    pub(crate) fn is_rsa(&self) -> bool {
        self.algorithm() == &rcgen::PKCS_RSA_SHA256
    }
}

fn rsa_to_key_pair(key: &rsa::RsaPrivateKey) -> Result<KeyPair> {
    let pkcs8 = key.to_pkcs8_der().map_err(|e| Error::Key {
        format: "RSA",
        reason: e.to_string(),
    })?;
    pkcs8_to_rsa_key_pair(pkcs8.as_bytes())
}

fn pkcs8_to_rsa_key_pair(pkcs8: &[u8]) -> Result<KeyPair> {
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), &rcgen::PKCS_RSA_SHA256).map_err(|e| {
        Error::Key {
            format: "RSA",
            reason: format!("{e} (ring accepts RSA keys of 2048 to 8192 bits)"),
        }
    })
}

fn sec1_to_key_pair(der: &[u8]) -> Result<KeyPair> {
    let sec1_err = |reason: String| Error::Key {
        format: "SEC1 EC",
        reason,
    };
    let parsed = sec1::EcPrivateKey::try_from(der).map_err(|e| sec1_err(e.to_string()))?;
    let curve = parsed
        .parameters
        .and_then(|p| p.named_curve())
        .ok_or_else(|| sec1_err("the key names no curve".into()))?;
    let pkcs8 = if curve == p256::NistP256::OID {
        let key = p256::SecretKey::from_sec1_der(der).map_err(|e| sec1_err(e.to_string()))?;
        key.to_pkcs8_der()
    } else if curve == p384::NistP384::OID {
        let key = p384::SecretKey::from_sec1_der(der).map_err(|e| sec1_err(e.to_string()))?;
        key.to_pkcs8_der()
    } else {
        return Err(Error::UnsupportedAlgorithm(format!(
            "EC curve {curve}; use P-256 or P-384"
        )));
    }
    .map_err(|e| sec1_err(e.to_string()))?;
    let pair = KeyPair::try_from(pkcs8.as_bytes()).map_err(|e| sec1_err(e.to_string()))?;
    Ok(pair)
}

pub(crate) fn signature_name(alg: &SignatureAlgorithm) -> &'static str {
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else {
        "RSA"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in KeyAlgorithm::ALL {
            assert_eq!(alg.name().parse::<KeyAlgorithm>().unwrap(), alg);
        }
        let err = "dsa".parse::<KeyAlgorithm>().unwrap_err().to_string();
        assert!(err.contains("ecdsa-p256"), "{err}");
    }

    #[test]
    fn from_parts_uses_the_usual_defaults() {
        assert_eq!(
            KeyAlgorithm::from_parts("ECDSA", None).unwrap(),
            KeyAlgorithm::EcdsaP256
        );
        assert_eq!(
            KeyAlgorithm::from_parts("RSA", None).unwrap(),
            KeyAlgorithm::Rsa2048
        );
        assert_eq!(
            KeyAlgorithm::from_parts("RSA", Some(4096)).unwrap(),
            KeyAlgorithm::Rsa4096
        );
        assert_eq!(
            KeyAlgorithm::from_parts("Ed25519", None).unwrap(),
            KeyAlgorithm::Ed25519
        );
        assert!(KeyAlgorithm::from_parts("RSA", Some(1024)).is_err());
        assert!(KeyAlgorithm::from_parts("ECDSA", Some(521)).is_err());
    }

    #[test]
    fn generated_keys_reload_from_their_pem() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = alg.generate().unwrap();
            let again = PrivateKey::from_pem(&key.to_pem()).unwrap();
            assert_eq!(key.public_key_raw(), again.public_key_raw(), "{alg}");
        }
    }

    #[test]
    fn generated_keys_are_made_ready_to_sign_with_the_same_public_key() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
        ] {
            let key = alg.generate().unwrap();
            assert!(matches!(key.0, Form::Generated { .. }), "{alg}");
            let public = key.public_key_raw().to_vec();
            let pair = key.into_pair().unwrap();
            assert_eq!(pair.public_key_raw(), public, "{alg}");
            assert_eq!(
                pair.algorithm(),
                alg.generate().unwrap().algorithm(),
                "{alg}"
            );
        }
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_version_1() {
        let pem = KeyAlgorithm::Ed25519.generate().unwrap().to_pem();
        let der = ::pem::parse(&pem).unwrap().into_contents();
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).unwrap();
        assert_eq!(info.version(), pkcs8::Version::V1);
        assert!(info.public_key.is_none());
        // RFC 8410's example layout: SEQUENCE of 46 bytes, version 0, the OID, the seed.
        assert_eq!(&der[..5], [0x30, 0x2e, 0x02, 0x01, 0x00]);
        assert_eq!(der.len(), 48);
        // The other algorithms are left as they are made.
        let p256 = KeyAlgorithm::EcdsaP256.generate().unwrap();
        assert_eq!(
            ::pem::parse(p256.to_pem()).unwrap().contents(),
            p256.pkcs8()
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let debug = format!("{key:?}");
        assert_eq!(debug, "PrivateKey { algorithm: \"ECDSA P-256\", .. }");
    }

    #[test]
    fn bad_pem_is_named() {
        let err = PrivateKey::from_pem("hello").unwrap_err().to_string();
        assert!(err.contains("no PEM block"), "{err}");
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = PrivateKey::from_pem(cert_only).unwrap_err().to_string();
        assert!(
            err.contains("`CERTIFICATE`") && err.contains("RSA PRIVATE KEY"),
            "{err}"
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            PrivateKey::from_pem(enc)
                .unwrap_err()
                .to_string()
                .contains("encrypted")
        );
    }
}
