//! Kubeconfig files: rendering one with everything inline (no file paths, no exec plugins, as
//! GitOps consumers such as Flux need), and parsing one to read its server, CA and credential.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;

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
///
/// The layout is fixed, so it is written line by line rather than through a YAML emitter
/// (serde_yaml's looked at every character of the base64 values: a twentieth of the
/// controller's CPU per issuance, `make bench`). Every value is a double-quoted scalar with
/// anything special escaped, so no name can change the file's structure; [`parse`] and
/// client-go read it back (the tests' kube-controller-manager runs on one).
pub fn render(spec: &KubeconfigSpec<'_>) -> Result<String> {
    if !(spec.server.starts_with("https://") || spec.server.starts_with("http://")) {
        return Err(Error::Kubeconfig(format!(
            "the server {:?} is not an http(s) URL; write for example https://api.example.com:6443",
            spec.server
        )));
    }
    let mut file = File(String::with_capacity(4096));
    file.0.push_str("apiVersion: v1\nkind: Config\nclusters:\n");
    file.text("- name: ", spec.cluster_name);
    file.text("  cluster:\n    server: ", spec.server);
    if let Some(ca) = spec.certificate_authority_pem {
        file.base64("    certificate-authority-data: ", ca);
    }
    file.text("users:\n- name: ", spec.user_name);
    match spec.credential {
        Credential::ClientCertificate {
            certificate_pem,
            private_key_pem,
        } => {
            file.base64("  user:\n    client-certificate-data: ", certificate_pem);
            file.base64("    client-key-data: ", private_key_pem);
        }
        Credential::Token(token) => file.text("  user:\n    token: ", token),
    }
    file.text("contexts:\n- name: ", spec.context_name);
    file.text("  context:\n    cluster: ", spec.cluster_name);
    file.text("    user: ", spec.user_name);
    if let Some(namespace) = spec.namespace {
        file.text("    namespace: ", namespace);
    }
    file.text("current-context: ", spec.context_name);
    Ok(file.0)
}

/// A kubeconfig file being written: the layout, then a value per line.
struct File(String);

impl File {
    /// `layout` then `text` as a YAML double-quoted scalar: what YAML 1.1 (client-go's
    /// parser) would not read back as is (quotes, backslashes, line breaks, non-printable
    /// characters) escaped.
    fn text(&mut self, layout: &str, text: &str) {
        self.0.push_str(layout);
        self.0.push('"');
        for c in text.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\t' => self.0.push_str("\\t"),
                '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{fefe}' => {
                    self.0.push(c)
                }
                '\u{ff00}'..='\u{fffd}' | '\u{10000}'.. => self.0.push(c),
                _ => self.0.push_str(&format!("\\u{:04x}", c as u32)),
            }
        }
        self.0.push_str("\"\n");
    }

    /// `layout` then `text` in base64, which needs no quoting.
    fn base64(&mut self, layout: &str, text: &str) {
        self.0.push_str(layout);
        STANDARD.encode_string(text.as_bytes(), &mut self.0);
        self.0.push('\n');
    }
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
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Config {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    current_context: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Default, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Default, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<String>,
    insecure_skip_tls_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: Option<String>,
    client_key_data: Option<Secret>,
    client_certificate: Option<String>,
    client_key: Option<String>,
    token: Option<Secret>,
    exec: Option<serde_yaml::Value>,
    auth_provider: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    cluster: String,
    user: String,
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
        assert!(yaml.contains("current-context: \"susan@prod\""), "{yaml}");
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

    proptest::proptest! {
        /// Whatever the names, the token and the namespace hold (quotes, colons, line breaks,
        /// `#`, control characters, YAML keywords), the file reads back as written.
        #[test]
        fn any_text_reads_back_as_written(
            name in "(?s).*", user in "(?s).*", token in "(?s).*", namespace in "(?s)(yes|null|~|-1|.*)"
        ) {
            let yaml = render(&KubeconfigSpec {
                cluster_name: &name,
                user_name: &user,
                context_name: &name,
                server: "https://127.0.0.1:6443",
                certificate_authority_pem: None,
                namespace: Some(&namespace),
                credential: Credential::Token(&token),
            })
            .unwrap();
            let parsed = parse(&yaml).unwrap();
            proptest::prop_assert_eq!(parsed.context_name.as_deref(), Some(name.as_str()));
            proptest::prop_assert_eq!(parsed.token.as_deref(), Some(token.as_str()));
            proptest::prop_assert_eq!(parsed.namespace.as_deref(), Some(namespace.as_str()));
        }
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
