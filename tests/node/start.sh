#!/usr/bin/env bash
# Starts a real Kubernetes node beside a test control plane: containerd (Debian's package) with
# runc and the CNI bridge, kubelet, kube-proxy (iptables mode) and kube-scheduler, built by
# tests/controlplane/build.sh node. Everything runs in a network namespace and a mount
# namespace of the node's own, held by one process: its iptables rules, bridge, veths and
# mounts vanish with it, and stop.sh (beside this script) removes the rest (cgroups, the host's
# end of the link). Called by the test harness (testenv/src/node.rs), which writes <dir>/env:
#
#   N          1..250: the node's link is 10.254.N.0/30 (host .1, node .2), its pods 10.253.N.0/24
#   NODE_NAME  the Node's name
#   NODE_BIN   the folder of kubelet, kube-scheduler, kube-proxy
#   OWNER_PID  (optional) stop the node when this process ends (a test binary killed midway)
#   IMAGES     (optional) OCI archives to import into the node's containerd, space-separated
#
# and the kubeconfigs kubelet.kubeconfig, proxy.kubeconfig, scheduler.kubeconfig and ca.crt.
# Prints nothing; logs go to <dir>/*.log. Exits once the processes run (the harness then waits
# for the Node to be Ready).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(cd "$1" && pwd)
# shellcheck source=/dev/null
source "$dir/env"
log() { echo "node: $*" >&2; }
fail() { log "$*"; "$here/stop.sh" "$dir" || true; exit 1; }

"$here/packages.sh" node
host_ip=10.254.$N.1 node_ip=10.254.$N.2 pod_cidr=10.253.$N.0/24 link=kanode$N
cgroup_root=/kubeconfig-authority-node-$N
mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/kubelet" "$dir/pod-logs" \
  "$dir/volume-plugins" "$dir/runc"

# Folders that containerd and kubelet use at fixed paths: each gets a tmpfs in the node's mount
# namespace. A folder created for that on the host is recorded, and removed by stop.sh.
: >"$dir/created"
for d in /var/lib/cni /var/log/containers; do
  [ -d "$d" ] || { mkdir -p "$d" && echo "$d" >>"$dir/created"; }
done

# The kubelet's cgroup root, in every v1 hierarchy (a new cpuset takes its parent's CPUs and
# memory nodes); stop.sh removes it.
for h in /sys/fs/cgroup/*/; do
  [ -e "$h/cgroup.procs" ] && [ "$(basename "$h")" != unified ] || continue
  mkdir -p "$h$cgroup_root"
  if [ -e "$h/cpuset.cpus" ]; then
    cat "$h/cpuset.cpus" >"$h$cgroup_root/cpuset.cpus"
    cat "$h/cpuset.mems" >"$h$cgroup_root/cpuset.mems"
  fi
done

# The holder: its namespaces are the node's. /run is private (containerd's shim sockets, the
# pods' network namespaces, iptables' lock), as are the CNI cache and the container log links.
setsid unshare --mount --net --propagation private -- sh -c '
  mount -t tmpfs -o mode=0755 kubeconfig-authority-node /run &&
  mount -t tmpfs -o mode=0755 kubeconfig-authority-node /var/lib/cni &&
  mount -t tmpfs -o mode=0755 kubeconfig-authority-node /var/log/containers &&
  echo ready >"$0/holder.ready" && exec sleep infinity' "$dir" </dev/null >"$dir/holder.log" 2>&1 &
holder=$!
echo "$holder" >"$dir/holder.pid"
for _ in $(seq 100); do [ -e "$dir/holder.ready" ] && break; sleep 0.05; done
[ -e "$dir/holder.ready" ] || fail "the namespace holder did not start: $(cat "$dir/holder.log")"
in_node() { nsenter --target "$holder" --mount --net -- "$@"; }

# The link between the host and the node; the host reaches the pods through it.
ip link add "$link" type veth peer name eth0 netns "$holder"
ip addr add "$host_ip/30" dev "$link"
ip link set "$link" up
ip route add "$pod_cidr" via "$node_ip" dev "$link"
in_node sh -ec "
  ip link set lo up
  ip addr add $node_ip/30 dev eth0
  ip link set eth0 up
  ip route add default via $host_ip
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.ipv4.conf.all.route_localnet=1"

started() { echo "$1 $2" >>"$dir/pids"; }
run_in_node() { # name args...
  local name=$1
  shift
  setsid nsenter --target "$holder" --mount --net -- "$@" </dev/null >"$dir/$name.log" 2>&1 &
  started "$!" "$name"
}

cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$dir/containerd/sock"
[ttrpc]
  address = "$dir/containerd/sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:kubeconfig-authority"
  enable_selinux = false
  # Without CAP_SYS_RESOURCE (as on these machines) no process may lower its OOM score
  # below containerd's; kubelet asks -998 for every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
cat >"$dir/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kubeconfig-authority-node", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
            "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
run_in_node containerd containerd --config "$dir/containerd.toml"
for _ in $(seq 200); do [ -S "$dir/containerd/sock" ] && break; sleep 0.05; done
[ -S "$dir/containerd/sock" ] || fail "containerd did not start: $(tail -5 "$dir/containerd.log")"
ctr_() { ctr --address "$dir/containerd/sock" --namespace k8s.io "$@"; }

# The pause image: a static program of ours, in an image made the way the controller's is.
pause_image=$("$here/pause.sh")
for archive in $pause_image ${IMAGES:-}; do
  ctr_ images import "$archive" >>"$dir/import.log" 2>&1 ||
    fail "importing $archive: $(tail -3 "$dir/import.log")"
done

cat >"$dir/resolv.conf" <<EOF
options ndots:1
EOF
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix://$dir/containerd/sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: $dir/resolv.conf
podLogsDir: $dir/pod-logs
volumePluginDir: $dir/volume-plugins
evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
protectKernelDefaults: false
kernelMemcgNotification: false
localStorageCapacityIsolation: false
EOF
run_in_node kubelet "$NODE_BIN/kubelet" --config="$dir/kubelet.yaml" \
  --kubeconfig="$dir/kubelet.kubeconfig" --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" \
  --hostname-override="$NODE_NAME" --node-ip="$node_ip" --v=1

cat >"$dir/proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $pod_cidr
bindAddress: $node_ip
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
run_in_node kube-proxy "$NODE_BIN/kube-proxy" --config="$dir/proxy.yaml" --v=1

run_in_node kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig="$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
  --leader-elect=false --secure-port=0

if [ -n "${OWNER_PID:-}" ]; then
  # A watchdog: the node goes when its owner does, however the owner ended.
  setsid sh -c 'while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$1" "$2" "$3" "$4"' \
    "$OWNER_PID" "$here/stop.sh" "$dir" "$N" "$holder" </dev/null >/dev/null 2>&1 &
  echo "$!" >"$dir/watchdog.pid"
fi
