use std::{path::PathBuf, time::Duration};

use clap::Args;
use kubeconfig_authority_pki::{
    CertificateAuthority, Identity, KeyAlgorithm, format_duration,
    kubeconfig::{self, Credential, KubeconfigSpec},
    parse_duration,
};
use time::OffsetDateTime;

use super::{CliError, read, rfc3339, write_private};

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The CA certificate (PEM). A bundle may hold several; the one the key belongs to signs.
    #[arg(long, value_name = "FILE")]
    ca_cert: PathBuf,
    /// The CA private key (PEM: PKCS#8, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`).
    #[arg(long, value_name = "FILE")]
    ca_key: PathBuf,
    /// The API server URL the kubeconfig points at.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The CA bundle that verifies the API server (PEM). Defaults to the CA certificate.
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// The username (certificate CN).
    #[arg(long, short = 'u')]
    username: String,
    /// A group (certificate O); repeat for several.
    #[arg(long = "group", short = 'g', value_name = "GROUP")]
    groups: Vec<String>,
    /// The kubeconfig's name: the certificate also carries the group `kubeconfig:<name>`.
    #[arg(long)]
    name: String,
    /// How long the certificate is valid, e.g. 24h, 90m, 720h. Cut to the CA's own expiry.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    validity: Duration,
    /// The leaf key's algorithm.
    #[arg(long, default_value_t = KeyAlgorithm::EcdsaP256, value_parser = str::parse::<KeyAlgorithm>)]
    key_algorithm: KeyAlgorithm,
    /// The cluster's name in the kubeconfig.
    #[arg(long, default_value = "kubernetes")]
    cluster_name: String,
    /// The namespace the context selects.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Where to write the kubeconfig (mode 0600). Standard output if not given.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(args: IssueArgs) -> Result<(), CliError> {
    let now = OffsetDateTime::now_utc();
    let ca_cert = read(&args.ca_cert)?;
    let ca_key = read(&args.ca_key)?;
    // Name the file the problem is in: the key, then the certificate.
    kubeconfig_authority_pki::PrivateKey::from_pem(&ca_key)
        .map_err(CliError::in_file(&args.ca_key))?;
    kubeconfig_authority_pki::parse_certificates(&ca_cert)
        .map_err(CliError::in_file(&args.ca_cert))?;
    let ca = CertificateAuthority::from_pem(&ca_cert, &ca_key, now)
        .map_err(CliError::in_file(&args.ca_cert))?;
    let server_ca = match &args.ca_bundle {
        Some(path) => {
            let text = read(path)?;
            kubeconfig_authority_pki::parse_certificates(&text).map_err(CliError::in_file(path))?;
            text
        }
        None => ca.certificate_pem().to_string(),
    };
    let identity = Identity::new(
        args.username.as_str(),
        args.groups.iter().map(String::as_str),
    )?
    .with_kubeconfig_name(&args.name)?;
    let issued = ca.issue(&identity, args.key_algorithm, args.validity, now)?;
    if issued.clamped_to_ca {
        eprintln!(
            "warning: the CA expires at {}, so the certificate is valid for {} instead of {}",
            rfc3339(ca.not_after()),
            format_duration((issued.not_after - now).try_into().unwrap_or_default()),
            format_duration(args.validity),
        );
    }
    let context_name = format!("{}@{}", args.username, args.cluster_name);
    let yaml = kubeconfig::render(&KubeconfigSpec {
        cluster_name: &args.cluster_name,
        user_name: &args.username,
        context_name: &context_name,
        server: &args.server,
        certificate_authority_pem: Some(&server_ca),
        namespace: args.namespace.as_deref(),
        credential: Credential::ClientCertificate {
            certificate_pem: &issued.certificate_pem,
            private_key_pem: &issued.private_key_pem,
        },
    })?;
    match &args.output {
        Some(path) => {
            write_private(path, &yaml)?;
            eprintln!(
                "wrote {} for {} (serial {}, valid until {})",
                path.display(),
                identity.username,
                issued.serial,
                rfc3339(issued.not_after)
            );
        }
        None => print!("{yaml}"),
    }
    Ok(())
}
