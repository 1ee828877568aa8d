//! The commands that talk to a cluster: `run` (the controller), `get` (download a kubeconfig),
//! and `crd` (print the CRDs, no cluster needed).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::{CliError, write_private};
use crate::{
    api::{AuthorityKind, AuthorityRef, Kubeconfig},
    runtime,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The authority of Kubeconfigs that name none: `ClusterAuthority/NAME`, or `Authority/NAME`
    /// (then looked up in each Kubeconfig's own namespace).
    #[arg(long, value_name = "KIND/NAME", value_parser = parse_authority_ref)]
    default_authority: Option<AuthorityRef>,
    /// Serve `/livez` and `/readyz` on this address (for example 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    health_addr: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "LOG_FORMAT")]
    log_format: LogFormat,
    /// How many Kubeconfigs are reconciled at once (0: no limit).
    #[arg(long, default_value_t = runtime::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Lead through a Lease so that several replicas can run (one reconciles, the others wait
    /// ready and idle). `--leader-elect=false` for a single replica without a Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The namespace of the Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "kubeconfig-authority-system"
    )]
    leader_election_namespace: String,
    /// The name of the Lease.
    #[arg(long, default_value = "kubeconfig-authority")]
    leader_election_lease: String,
    /// The log level and filters, as RUST_LOG takes them (for example `debug` or
    /// `info,kubeconfig_authority=debug`). Default: RUST_LOG, else `info`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// A client-side limit on requests per second to the API server, to protect a busy one.
    /// Default: none (the API server's own flow control decides).
    #[arg(long, value_name = "QPS")]
    qps: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// This replica's name in the Lease: the Pod's name, else the host's, with a random suffix.
fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kubeconfig-authority".into());
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    format!("{base}-{:08x}", u32::from_be_bytes(bytes))
}

fn parse_authority_ref(s: &str) -> Result<AuthorityRef, String> {
    let (kind, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: write KIND/NAME, e.g. ClusterAuthority/cluster-ca"))?;
    let kind = match kind {
        "Authority" => AuthorityKind::Authority,
        "ClusterAuthority" => AuthorityKind::ClusterAuthority,
        other => return Err(format!("{other:?} is not Authority or ClusterAuthority")),
    };
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    Ok(AuthorityRef {
        kind,
        name: name.into(),
    })
}

pub fn run(args: RunArgs) -> Result<(), CliError> {
    let filter = match &args.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| CliError::Usage(format!("--log-level {level:?}: {e}")))?,
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,kube_client=warn,kube_runtime=warn".into()),
    };
    // Colours only for a person at a terminal: a pod's log, a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    // One thread: the controller waits on the API server, and its own work per Kubeconfig is
    // about a millisecond. Threads handing every response over to each other cost a quarter
    // of its CPU more for the same throughput (`make bench`); slow key generation (RSA) runs on
    // the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let connect = |e: &dyn std::fmt::Display| {
            CliError::Usage(format!(
                "connecting to the cluster (current kubeconfig or in-cluster config): {e}"
            ))
        };
        let config = kube::Config::infer().await.map_err(|e| connect(&e))?;
        // Every request gets an answer (its headers; a watch's events stream on) within 30 s,
        // or fails and is retried: a request left hanging by an API server that went away
        // would otherwise wait for the client's 295 s read timeout.
        let builder = crate::client::connect::builder(config)
            .map_err(|e| connect(&e))?
            .with_layer(&tower::timeout::TimeoutLayer::new(
                crate::client::REQUEST_TIMEOUT,
            ));
        let client = match args.qps {
            Some(qps) if qps > 0 => builder
                .with_layer(&tower::limit::RateLimitLayer::new(
                    qps,
                    std::time::Duration::from_secs(1),
                ))
                .build(),
            _ => builder.build(),
        };
        runtime::run(
            client,
            runtime::Options {
                default_authority: args.default_authority,
                health_addr: args.health_addr,
                concurrency: args.concurrency,
                leader_election: args.leader_elect.then(|| runtime::LeaderElection {
                    namespace: args.leader_election_namespace.clone(),
                    lease: args.leader_election_lease.clone(),
                    identity: identity(),
                }),
            },
        )
        .await
        .map_err(|e| CliError::Usage(e.to_string()))
    })
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The Kubeconfig's name.
    name: String,
    /// Its namespace. Default: the current context's.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Where to write it (mode 0600). Standard output if not given.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Runs `job` with a client for the current context and the namespace asked for (or the
/// context's).
fn on_cluster<T>(
    namespace: Option<&str>,
    job: impl AsyncFnOnce(Client, String) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let client = Client::try_default()
            .await
            .map_err(|e| CliError::Usage(format!("connecting to the cluster: {e}")))?;
        let namespace =
            namespace.map_or_else(|| client.default_namespace().to_string(), String::from);
        job(client, namespace).await
    })
}

pub fn get(args: GetArgs) -> Result<(), CliError> {
    let yaml = on_cluster(args.namespace.as_deref(), async |client, namespace| {
        let not_ready =
            |why: String| CliError::Usage(format!("Kubeconfig {namespace}/{}: {why}", args.name));
        let kc = Api::<Kubeconfig>::namespaced(client.clone(), &namespace)
            .get_opt(&args.name)
            .await
            .map_err(|e| not_ready(e.to_string()))?
            .ok_or_else(|| not_ready("not found".into()))?;
        let ready = kc
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                return Err(not_ready(format!(
                    "not ready ({}): {}",
                    c.reason, c.message
                )));
            }
            None => return Err(not_ready("not issued yet".into())),
        }
        let key = kc
            .spec
            .secret_ref
            .kubeconfig_keys
            .as_ref()
            .and_then(|k| k.first().cloned())
            .unwrap_or_else(|| "kubeconfig".into());
        let secret = Api::<Secret>::namespaced(client, &namespace)
            .get(&kc.spec.secret_ref.name)
            .await
            .map_err(|e| not_ready(format!("reading Secret {}: {e}", kc.spec.secret_ref.name)))?;
        let data = secret
            .data
            .and_then(|d| d.get(&key).cloned())
            .ok_or_else(|| {
                not_ready(format!(
                    "Secret {} has no key {key}",
                    kc.spec.secret_ref.name
                ))
            })?;
        String::from_utf8(data.0).map_err(|_| not_ready(format!("key {key} is not text")))
    })?;
    match &args.output {
        Some(path) => write_private(path, &yaml),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The Kubeconfig's name.
    name: String,
    /// Its namespace. Default: the current context's.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
}

/// Asks the controller for one renewal now: sets the annotation
/// `kubeconfig-authority.dev/renew-requested-at` to the current time.
pub fn renew(args: RenewArgs) -> Result<(), CliError> {
    on_cluster(args.namespace.as_deref(), async |client, namespace| {
        let now = super::rfc3339(time::OffsetDateTime::now_utc());
        let patch =
            serde_json::json!({"metadata": {"annotations": {crate::api::RENEW_ANNOTATION: now}}});
        Api::<Kubeconfig>::namespaced(client, &namespace)
            .patch(
                &args.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|e| CliError::Usage(format!("Kubeconfig {namespace}/{}: {e}", args.name)))?;
        println!(
            "renewal of Kubeconfig {namespace}/{} requested at {now}; status.renewRequestedAt says when it is done",
            args.name
        );
        Ok(())
    })
}

/// Prints generated manifests.
pub fn print_yaml(
    what: &str,
    yaml: Result<String, serde_yaml::Error>,
) -> Result<ExitCode, CliError> {
    let yaml = yaml.map_err(|e| CliError::Usage(format!("rendering {what}: {e}")))?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}
