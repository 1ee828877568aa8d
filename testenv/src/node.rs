//! A real node beside a test control plane: containerd, runc and the CNI bridge from Debian's
//! packages; kubelet, kube-proxy and kube-scheduler built from the pinned Kubernetes module
//! (`tests/controlplane/build.sh node`). `tests/node/start.sh` starts it in namespaces of its
//! own and `tests/node/stop.sh` removes every trace of it; this module writes their inputs,
//! waits for the Node to be Ready, and stops it on drop.
//!
//! The node's link is `10.254.N.0/30` (the host `.1`, the node `.2`) and its pods get
//! `10.253.N.0/24`, for an `N` of this run's; the API server must be started with
//! [`ControlPlane::start_with`]`(Some(Node::host_address(N)))`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node as NodeObject;

use crate::{ControlPlane, REPO};

pub struct Node {
    pub name: String,
    /// Where the node's configuration, state and logs are (inside the control plane's folder).
    pub dir: PathBuf,
    pub n: u8,
}

impl Node {
    /// A number for this run's node link, from the process id (two test runs at once get
    /// different links).
    pub fn pick() -> u8 {
        (std::process::id() % 250 + 1) as u8
    }

    /// The host's address on the link of node `n`: the API server's advertised address.
    pub fn host_address(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 254, n, 1)
    }

    /// Starts the node `n` for `plane` (started with [`Node::host_address`]`(n)`), with the
    /// OCI archives `images` imported into its containerd, and waits until the Node is Ready.
    /// It stops when this value is dropped, or when this process ends without dropping it.
    pub async fn start(plane: &ControlPlane, n: u8, images: &[PathBuf]) -> Result<Node, String> {
        let started = Instant::now();
        let bin = binaries()?;
        let name = format!("node-{n}");
        let dir = plane.dir.path().join("node");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let port = plane
            .server
            .rsplit(':')
            .next()
            .ok_or("the API server's address has no port")?;
        let server = format!("https://{}:{port}", Node::host_address(n));
        let write = |file: &str, text: &str| {
            std::fs::write(dir.join(file), text).map_err(|e| format!("{file}: {e}"))
        };
        let kubeconfig = |user: &str, groups: &[&str]| {
            plane
                .ca
                .kubeconfig_for(&server, &plane.ca_cert_pem, user, groups)
        };
        write(
            "kubelet.kubeconfig",
            &kubeconfig(&format!("system:node:{name}"), &["system:nodes"]),
        )?;
        write("proxy.kubeconfig", &kubeconfig("system:kube-proxy", &[]))?;
        write(
            "scheduler.kubeconfig",
            &kubeconfig("system:kube-scheduler", &[]),
        )?;
        write("ca.crt", &plane.ca_cert_pem)?;
        let images: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
        let owner = if crate::detached_mode() {
            String::new()
        } else {
            std::process::id().to_string()
        };
        write(
            "env",
            &format!(
                "N={n}\nNODE_NAME={name}\nNODE_BIN={}\nOWNER_PID={owner}\nIMAGES='{}'\n",
                bin.display(),
                images.join(" ")
            ),
        )?;
        // The plane's stop script (make cluster) stops the node first.
        write(
            "stop",
            &format!(
                "#!/bin/sh\nexec {}/tests/node/stop.sh {}\n",
                REPO,
                dir.display()
            ),
        )?;
        std::fs::set_permissions(
            dir.join("stop"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| e.to_string())?;
        let node = Node { name, dir, n };
        let out = Command::new(Path::new(REPO).join("tests/node/start.sh"))
            .arg(&node.dir)
            .output()
            .map_err(|e| format!("running tests/node/start.sh: {e}"))?;
        let ready = if out.status.success() {
            node.wait_ready(plane, Duration::from_secs(120)).await
        } else {
            Err(format!(
                "tests/node/start.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        };
        if let Err(e) = ready {
            // Kept or not, a node that did not start leaves nothing behind.
            node.stop();
            return Err(e);
        }
        eprintln!(
            "node {} Ready in {:.1?} ({})",
            node.name,
            started.elapsed(),
            node.dir.display()
        );
        Ok(node)
    }

    async fn wait_ready(&self, plane: &ControlPlane, timeout: Duration) -> Result<(), String> {
        let nodes = kube::Api::<NodeObject>::all(plane.admin().await);
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not registered");
        while Instant::now() < deadline {
            match nodes.get_opt(&self.name).await {
                Ok(Some(node)) => {
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready");
                    match ready {
                        Some(c) if c.status == "True" => return Ok(()),
                        Some(c) => last = format!("Ready={}: {:?}", c.status, c.message),
                        None => last = "no Ready condition yet".into(),
                    }
                }
                Ok(None) => {}
                Err(e) => last = e.to_string(),
            }
            for process in ["containerd", "kubelet", "kube-proxy", "kube-scheduler"] {
                let log = self.dir.join(format!("{process}.log"));
                if !self.running(process) {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                    return Err(format!(
                        "{process} of {} exited:\n{}",
                        self.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!(
            "Node {} not Ready within {timeout:?}: {last} (logs in {})",
            self.name,
            self.dir.display()
        ))
    }

    /// Whether the node's process `name` (as recorded by start.sh) is alive: the program
    /// itself, or still `setsid`/`nsenter` on its way to it (a process just started has not
    /// exec'd yet).
    fn running(&self, name: &str) -> bool {
        let pids = std::fs::read_to_string(self.dir.join("pids")).unwrap_or_default();
        pids.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, n)| *n == name)
            .any(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| {
                    let comm = comm.trim();
                    name.starts_with(comm) || comm == "setsid" || comm == "nsenter"
                })
            })
    }

    /// Stops the node and removes what it left on the host (see `tests/node/stop.sh`).
    pub fn stop(&self) {
        let _ = Command::new(Path::new(REPO).join("tests/node/stop.sh"))
            .arg(&self.dir)
            .status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !crate::detached_mode() {
            self.stop();
        }
    }
}

/// The folder holding kubelet, kube-scheduler, kube-proxy and kubectl (built on first use).
pub fn binaries() -> Result<PathBuf, String> {
    let out = Command::new(Path::new(REPO).join("tests/controlplane/build.sh"))
        .arg("node")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running tests/controlplane/build.sh node: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tests/controlplane/build.sh node failed ({})",
            out.status
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}
