//! The command line: `issue` and `inspect` work offline from CA files; `run` is the
//! controller; `get` downloads an issued kubeconfig; `crd` prints the CRDs.

mod controller;
mod inspect;
mod issue;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kubeconfig-authority",
    version,
    about = "Issues kubeconfigs: a Kubernetes controller and an offline command-line tool"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Issue a client-certificate kubeconfig from CA files, offline.
    Issue(Box<issue::IssueArgs>),
    /// Show who a kubeconfig or certificate says it is, and until when.
    ///
    /// Exits 0 when the certificate is valid now (and, with --ca-bundle, verifies), 1 when it is
    /// expired, not yet valid or does not verify, 2 on an error.
    Inspect(inspect::InspectArgs),
    /// Run the controller against the current kubeconfig or the in-cluster configuration.
    Run(controller::RunArgs),
    /// Download the kubeconfig a Kubeconfig object issued, from its Secret.
    Get(controller::GetArgs),
    /// Ask the controller to renew a Kubeconfig's credential now (once).
    Renew(controller::RenewArgs),
    /// Print the CustomResourceDefinitions (YAML).
    Crd,
    /// Print the escalation guard: the ValidatingAdmissionPolicies and their bindings (YAML).
    Admission,
}

/// An error for the person at the terminal: what went wrong, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pki {
        path: PathBuf,
        #[source]
        source: kubeconfig_authority_pki::Error,
    },
    #[error("{0}")]
    Invalid(#[from] kubeconfig_authority_pki::Error),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// Attaches a file name to a pki error.
    fn in_file(path: &Path) -> impl FnOnce(kubeconfig_authority_pki::Error) -> CliError + '_ {
        move |source| CliError::Pki {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Issue(args) => issue::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => inspect::run(args),
        Command::Run(args) => controller::run(args).map(|()| ExitCode::SUCCESS),
        Command::Get(args) => controller::get(args).map(|()| ExitCode::SUCCESS),
        Command::Renew(args) => controller::renew(args).map(|()| ExitCode::SUCCESS),
        Command::Crd => controller::print_yaml("the CRDs", crate::api::crds_yaml()),
        Command::Admission => controller::print_yaml(
            "the admission policies",
            crate::api::admission::admission_yaml(),
        ),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with mode 0600, atomically: a temporary file in the same folder,
/// renamed over the target, so that an error leaves nothing partial behind.
fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    let file_err = |source| CliError::File {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kubeconfig-authority-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(file_err)?;
    tmp.write_all(contents.as_bytes()).map_err(file_err)?;
    tmp.as_file().sync_all().map_err(file_err)?;
    tmp.persist(path).map_err(|e| file_err(e.error))?;
    Ok(())
}

/// A time as RFC 3339 to the second, the way kubectl shows times.
fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
