//! `make cluster`: a control plane and one real node (containerd, kubelet, kube-proxy,
//! kube-scheduler, the CNI bridge), left running with an admin kubeconfig and a stop script,
//! as `make demo KEEP=1` leaves its control plane. Nothing of this project is installed on it:
//! install it with `helm install` or `kubectl apply -k` after `make image` (see the README).
//! Set `CLUSTER_IMAGES` to OCI archives (space-separated) to import into the node's containerd.

use kubeconfig_authority_testenv as support;

use std::path::PathBuf;

use support::node::Node;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("KUBECONFIG_AUTHORITY_KEEP", "1") };
    let n = Node::pick();
    let plane =
        std::thread::spawn(move || support::ControlPlane::start_with(Some(Node::host_address(n))))
            .join()
            .map_err(|_| "start-up panicked")??;
    // kube-controller-manager runs Deployments, ReplicaSets, garbage collection, ServiceAccount
    // tokens: what the node's pods need.
    plane.start_controller_manager();
    let images: Vec<PathBuf> = std::env::var("CLUSTER_IMAGES")
        .unwrap_or_default()
        .split_whitespace()
        .map(PathBuf::from)
        .collect();
    let node = Node::start(&plane, n, &images).await?;
    let name = node.name.clone();
    // The plane's stop script stops the node first.
    std::mem::forget(node);
    let dir = plane.detach();
    let kubectl = support::node::binaries()?;
    println!(
        "\nA control plane and the Node {name} are running; its containerd holds the images\n\
         {images:?}.\n  export KUBECONFIG={0}/admin.kubeconfig PATH={1}:$PATH\n  kubectl get nodes\n\
         Logs are in {0} and {0}/node. Stop everything and remove the folder with:\n  {0}/stop",
        dir.display(),
        kubectl.display()
    );
    Ok(())
}
