//! Kubeconfig files: rendering one with everything inline (no file paths, no exec plugins, as
//! GitOps consumers such as Flux need), and parsing one to read its server, CA and credential.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The credential a kubeconfig's user presents.
pub enum Credential<'a> {
    ClientCertificate {
        certificate_pem: &'a str,
        private_key_pem: &'a str,
    },
    Token(&'a str),
}

/// What goes into a rendered kubeconfig. Cluster, user and context names are the caller's.
pub struct KubeconfigSpec<'a> {
    pub cluster_name: &'a str,
    pub user_name: &'a str,
    pub context_name: &'a str,
    pub server: &'a str,
    /// PEM of the CA bundle that verifies the server; `None` uses the system roots.
    pub certificate_authority_pem: Option<&'a str>,
    /// The namespace the context selects, if any.
    pub namespace: Option<&'a str>,
    pub credential: Credential<'a>,
}

/// Renders a kubeconfig with one cluster, one user and one context, which is also the
/// current context.
pub fn render(spec: &KubeconfigSpec<'_>) -> Result<String> {
    if !(spec.server.starts_with("https://") || spec.server.starts_with("http://")) {
        return Err(Error::Kubeconfig(format!(
            "the server {:?} is not an http(s) URL; write for example https://api.example.com:6443",
            spec.server
        )));
    }
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    let user = match spec.credential {
        Credential::ClientCertificate {
            certificate_pem,
            private_key_pem,
        } => User {
            client_certificate_data: Some(b64(certificate_pem)),
            client_key_data: Some(Secret(b64(private_key_pem))),
            ..User::default()
        },
        Credential::Token(token) => User {
            token: Some(Secret(token.to_string())),
            ..User::default()
        },
    };
    let config = Config {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: spec.cluster_name.into(),
            cluster: Cluster {
                server: spec.server.into(),
                certificate_authority_data: spec.certificate_authority_pem.map(b64),
                ..Cluster::default()
            },
        }],
        users: vec![NamedUser {
            name: spec.user_name.into(),
            user,
        }],
        contexts: vec![NamedContext {
            name: spec.context_name.into(),
            context: Context {
                cluster: spec.cluster_name.into(),
                user: spec.user_name.into(),
                namespace: spec.namespace.map(Into::into),
            },
        }],
        current_context: Some(spec.context_name.into()),
    };
    serde_yaml::to_string(&config).map_err(|e| Error::Kubeconfig(e.to_string()))
}

/// A parsed kubeconfig's current context, resolved: its server, CA and credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Parsed {
    pub context_name: Option<String>,
    pub server: String,
    pub certificate_authority_pem: Option<String>,
    pub insecure_skip_tls_verify: bool,
    pub client_certificate_pem: Option<String>,
    pub client_key_pem: Option<String>,
    pub token: Option<String>,
    pub namespace: Option<String>,
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed")
            .field("context_name", &self.context_name)
            .field("server", &self.server)
            .field(
                "has_client_certificate",
                &self.client_certificate_pem.is_some(),
            )
            .field("has_client_key", &self.client_key_pem.is_some())
            .field("has_token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Parses a kubeconfig and resolves its current context (or, with no current context, its
/// only context). Credentials and CAs must be inline: a file path is reported as an error,
/// since this crate reads no files and a kubeconfig handed between machines cannot carry them.
pub fn parse(yaml: &str) -> Result<Parsed> {
    let config: Config =
        serde_yaml::from_str(yaml).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let context_name = match &config.current_context {
        Some(name) if !name.is_empty() => name.clone(),
        _ if config.contexts.len() == 1 => config.contexts[0].name.clone(),
        _ => {
            return Err(Error::Kubeconfig(format!(
                "it has no current-context and {} contexts; set current-context",
                config.contexts.len()
            )));
        }
    };
    let find = |kind: &str, names: Vec<&str>, wanted: &str| -> Result<usize> {
        names.iter().position(|n| *n == wanted).ok_or_else(|| {
            Error::Kubeconfig(format!(
                "the {kind} {wanted:?} named by context {context_name:?} is not defined"
            ))
        })
    };
    let context = &config.contexts[find(
        "context",
        config.contexts.iter().map(|c| c.name.as_str()).collect(),
        &context_name,
    )?]
    .context;
    let cluster = &config.clusters[find(
        "cluster",
        config.clusters.iter().map(|c| c.name.as_str()).collect(),
        &context.cluster,
    )?]
    .cluster;
    let user = &config.users[find(
        "user",
        config.users.iter().map(|c| c.name.as_str()).collect(),
        &context.user,
    )?]
    .user;

    let no_files = |field: &str, path: &Option<String>| match path {
        Some(p) => Err(Error::Kubeconfig(format!(
            "{field} points at the file {p:?}; only inline data ({field}-data) is supported"
        ))),
        None => Ok(()),
    };
    no_files("certificate-authority", &cluster.certificate_authority)?;
    no_files("client-certificate", &user.client_certificate)?;
    no_files("client-key", &user.client_key)?;
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(Error::Kubeconfig(format!(
            "the user {:?} uses an exec or auth-provider plugin; only inline certificates and tokens are supported",
            context.user
        )));
    }
    let decode = |field: &str, data: &Option<String>| -> Result<Option<String>> {
        data.as_ref()
            .map(|d| {
                let bytes = STANDARD
                    .decode(d.trim())
                    .map_err(|e| Error::Kubeconfig(format!("{field} is not base64: {e}")))?;
                String::from_utf8(bytes)
                    .map_err(|_| Error::Kubeconfig(format!("{field} is not PEM text")))
            })
            .transpose()
    };
    Ok(Parsed {
        context_name: Some(context_name.clone()),
        server: cluster.server.clone(),
        certificate_authority_pem: decode(
            "certificate-authority-data",
            &cluster.certificate_authority_data,
        )?,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify.unwrap_or(false),
        client_certificate_pem: decode("client-certificate-data", &user.client_certificate_data)?,
        client_key_pem: decode(
            "client-key-data",
            &user.client_key_data.as_ref().map(|s| s.0.clone()),
        )?,
        token: user.token.as_ref().map(|t| t.0.clone()),
        namespace: context.namespace.clone(),
    })
}

/// A string that is written and read as usual but never shown by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Config {
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_context: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_skip_tls_verify: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_data: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<serde_yaml::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_provider: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Context {
    cluster: String,
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIC\n-----END PRIVATE KEY-----\n";

    fn spec(credential: Credential<'_>) -> KubeconfigSpec<'_> {
        KubeconfigSpec {
            cluster_name: "prod",
            user_name: "susan",
            context_name: "susan@prod",
            server: "https://127.0.0.1:6443",
            certificate_authority_pem: Some(CERT),
            namespace: Some("team-a"),
            credential,
        }
    }

    #[test]
    fn renders_everything_inline_and_parses_back() {
        let yaml = render(&spec(Credential::ClientCertificate {
            certificate_pem: CERT,
            private_key_pem: KEY,
        }))
        .unwrap();
        assert!(yaml.contains("current-context: susan@prod"), "{yaml}");
        assert!(yaml.contains("client-certificate-data:") && yaml.contains("client-key-data:"));
        assert!(!yaml.contains("BEGIN"), "PEM is base64-encoded inline");
        let parsed = parse(&yaml).unwrap();
        assert_eq!(parsed.server, "https://127.0.0.1:6443");
        assert_eq!(parsed.certificate_authority_pem.as_deref(), Some(CERT));
        assert_eq!(parsed.client_certificate_pem.as_deref(), Some(CERT));
        assert_eq!(parsed.client_key_pem.as_deref(), Some(KEY));
        assert_eq!(parsed.namespace.as_deref(), Some("team-a"));
        assert!(parsed.token.is_none());
        assert!(
            !format!("{parsed:?}").contains("MIIC"),
            "Debug hides the key"
        );
    }

    #[test]
    fn renders_tokens() {
        let yaml = render(&spec(Credential::Token("abc.def.ghi"))).unwrap();
        let parsed = parse(&yaml).unwrap();
        assert_eq!(parsed.token.as_deref(), Some("abc.def.ghi"));
        assert!(!format!("{parsed:?}").contains("abc.def"));
    }

    #[test]
    fn refuses_what_cannot_travel() {
        assert!(
            render(&KubeconfigSpec {
                server: "api:6443",
                ..spec(Credential::Token("t"))
            })
            .is_err()
        );
        let with_files = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://x', certificate-authority: /etc/ca.crt}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n";
        assert!(
            parse(with_files)
                .unwrap_err()
                .to_string()
                .contains("only inline data")
        );
        let exec = "clusters: [{name: c, cluster: {server: 'https://x'}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n";
        assert!(
            parse(exec).unwrap_err().to_string().contains("exec"),
            "one context is current without current-context"
        );
        let dangling = "clusters: []\nusers: []\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n";
        assert!(
            parse(dangling)
                .unwrap_err()
                .to_string()
                .contains("cluster \"c\"")
        );
        assert!(parse("{{{").is_err());
    }

    #[test]
    fn reads_a_kamaji_style_admin_conf() {
        // The shape Kamaji and kubeadm write: several fields we do not model, inline data.
        let b64 = STANDARD.encode(CERT);
        let yaml = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {b64}\n    server: https://tenant-00.tenants.svc:6443\n  name: tenant-00\ncontexts:\n- context:\n    cluster: tenant-00\n    user: kubernetes-admin\n  name: kubernetes-admin@tenant-00\ncurrent-context: kubernetes-admin@tenant-00\nkind: Config\npreferences: {{}}\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {b64}\n    client-key-data: {b64}\n"
        );
        let parsed = parse(&yaml).unwrap();
        assert_eq!(parsed.server, "https://tenant-00.tenants.svc:6443");
        assert_eq!(parsed.certificate_authority_pem.as_deref(), Some(CERT));
    }
}
