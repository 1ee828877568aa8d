use time::OffsetDateTime;

/// Everything that can go wrong in this crate. Messages say what is wrong and, where there is
/// one, how to fix it. None of them ever holds key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PEM block found; expected {expected}")]
    NoPem { expected: &'static str },
    #[error("found a PEM block of type `{found}`; expected {expected}")]
    WrongPemType {
        found: String,
        expected: &'static str,
    },
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("the certificate could not be parsed: {0}")]
    Certificate(String),
    #[error("the private key could not be parsed as {format}: {reason}")]
    Key {
        format: &'static str,
        reason: String,
    },
    #[error(
        "the private key is encrypted; decrypt it first (for example `openssl pkey -in KEY -out PLAIN.key`)"
    )]
    EncryptedKey,
    #[error("unsupported key algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("the certificate {subject:?} is not a CA (basicConstraints CA:TRUE is missing)")]
    NotCa { subject: String },
    #[error(
        "the CA certificate {subject:?} may not sign certificates (its keyUsage lacks keyCertSign)"
    )]
    CannotSign { subject: String },
    #[error("the CA certificate {subject:?} expired at {not_after}; renew or replace the CA")]
    CaExpired {
        subject: String,
        not_after: OffsetDateTime,
    },
    #[error("the CA certificate {subject:?} is not valid before {not_before}")]
    CaNotYetValid {
        subject: String,
        not_before: OffsetDateTime,
    },
    #[error(
        "the private key does not match the CA certificate{}; check that the key and certificate belong together",
        if *.certificates > 1 { format!(" (none of the {} certificates)", .certificates) } else { String::new() }
    )]
    KeyMismatch { certificates: usize },
    #[error("invalid duration {input:?}: {reason}")]
    Duration { input: String, reason: String },
    #[error("invalid identity: {0}")]
    Identity(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(String),
}
