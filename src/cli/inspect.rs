use std::{path::PathBuf, process::ExitCode};

use clap::{Args, ValueEnum};
use kubeconfig_authority_pki::{
    CertificateInfo, Verification, format_duration, inspect_certificate, kubeconfig,
    parse_certificates, verify_against,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::{CliError, read, rfc3339};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A kubeconfig, or a PEM certificate.
    file: PathBuf,
    /// Check that the client certificate was issued by a CA of this bundle (PEM).
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    file: PathBuf,
    /// `kubeconfig` or `certificate`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    /// `clientCertificate` or `token`.
    credential: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertificateInfo>,
    valid_now: bool,
    seconds_left: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<Verification>,
}

pub fn run(args: InspectArgs) -> Result<ExitCode, CliError> {
    let now = OffsetDateTime::now_utc();
    let text = read(&args.file)?;
    let (kind, context, server, certificate_pem) = if text.contains("-----BEGIN") {
        ("certificate", None, None, Some(text.clone()))
    } else {
        let parsed = kubeconfig::parse(&text).map_err(CliError::in_file(&args.file))?;
        (
            "kubeconfig",
            parsed.context_name.clone(),
            Some(parsed.server.clone()),
            parsed.client_certificate_pem.clone(),
        )
    };
    let Some(certificate_pem) = certificate_pem else {
        // A token credential: nothing to read without sending it somewhere.
        let report = Report {
            file: args.file,
            kind,
            context,
            server,
            credential: "token",
            certificate: None,
            valid_now: true,
            seconds_left: 0,
            verification: None,
        };
        print(&report, args.output, now);
        return Ok(ExitCode::SUCCESS);
    };
    let der = parse_certificates(&certificate_pem).map_err(CliError::in_file(&args.file))?;
    let info = inspect_certificate(&der[0]).map_err(CliError::in_file(&args.file))?;
    let verification = match &args.ca_bundle {
        Some(path) => {
            let bundle = parse_certificates(&read(path)?).map_err(CliError::in_file(path))?;
            Some(verify_against(&der[0], &bundle, now)?)
        }
        None => None,
    };
    let report = Report {
        file: args.file,
        kind,
        context,
        server,
        credential: "clientCertificate",
        valid_now: info.is_valid_at(now),
        seconds_left: info.time_left(now).as_secs(),
        certificate: Some(info),
        verification,
    };
    print(&report, args.output, now);
    let verified = !matches!(report.verification, Some(Verification::NotVerified { .. }));
    Ok(if report.valid_now && verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print(report: &Report, format: Format, now: OffsetDateTime) {
    if let Format::Json = format {
        // Serializing plain data cannot fail; fall back to the text form if it ever did.
        if let Ok(json) = serde_json::to_string_pretty(report) {
            println!("{json}");
            return;
        }
    }
    let line = |label: &str, value: &str| println!("{:<14} {value}", format!("{label}:"));
    line(
        "File",
        &format!("{} ({})", report.file.display(), report.kind),
    );
    if let Some(context) = &report.context {
        line("Context", context);
    }
    if let Some(server) = &report.server {
        line("Server", server);
    }
    let Some(info) = &report.certificate else {
        line("Credential", "token (not inspected)");
        return;
    };
    line("Username", &info.identity.username);
    line("Groups", &info.identity.groups.join(", "));
    line("Serial", &info.serial);
    line("Credential ID", &info.credential_id);
    line("Issuer", &info.issuer);
    line("Not before", &rfc3339(info.not_before));
    let status = if now < info.not_before {
        "not yet valid".to_string()
    } else if report.valid_now {
        format!(
            "{} left",
            format_duration(whole_seconds(info.time_left(now)))
        )
    } else {
        format!(
            "EXPIRED {} ago",
            format_duration(whole_seconds(
                (now - info.not_after).try_into().unwrap_or_default()
            ))
        )
    };
    line(
        "Not after",
        &format!("{} ({status})", rfc3339(info.not_after)),
    );
    line(
        "Verified",
        &match &report.verification {
            None => "not checked (pass --ca-bundle)".to_string(),
            Some(Verification::Verified { by }) => format!("yes, issued by {by}"),
            Some(Verification::NotVerified { reason }) => format!("NO: {reason}"),
        },
    );
}

fn whole_seconds(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}
