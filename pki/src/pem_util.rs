use crate::{Error, Result};

pub(crate) const CERTIFICATE: &str = "CERTIFICATE";

/// Parses every PEM block of a text, with a clear error for text that is not PEM.
pub(crate) fn parse_blocks(text: &str, expected: &'static str) -> Result<Vec<pem::Pem>> {
    let blocks = pem::parse_many(text).map_err(|e| Error::Pem(e.to_string()))?;
    if blocks.is_empty() {
        return Err(Error::NoPem { expected });
    }
    Ok(blocks)
}

/// The DER of every `CERTIFICATE` block in a PEM bundle, in order. Other blocks are an error
/// unless at least one certificate is present (a key beside the certificates is ignored, as
/// `cat tls.crt tls.key` bundles are common).
pub fn parse_certificates(text: &str) -> Result<Vec<Vec<u8>>> {
    const EXPECTED: &str = "one or more `CERTIFICATE` blocks";
    let blocks = parse_blocks(text, EXPECTED)?;
    let certificates: Vec<Vec<u8>> = blocks
        .iter()
        .filter(|b| b.tag() == CERTIFICATE)
        .map(|b| b.contents().to_vec())
        .collect();
    if certificates.is_empty() {
        return Err(Error::WrongPemType {
            found: blocks[0].tag().to_string(),
            expected: EXPECTED,
        });
    }
    Ok(certificates)
}

/// Encodes DER as a PEM block with LF line endings.
pub(crate) fn encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
