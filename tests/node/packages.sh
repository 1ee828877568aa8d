#!/usr/bin/env bash
# Installs, from Debian's packages, what building the image and running a test node need, if
# anything is missing: buildah (images without a daemon), musl-tools (the static C toolchain
# for ring, jemalloc and the pause program), containerd, runc, the CNI plugins, iptables and
# conntrack. Needs root (CI machines start without them).
#
#   packages.sh image   only what `make image` needs
#   packages.sh node    everything
set -euo pipefail
log() { echo "packages: $*" >&2; }
declare -A command_of=(
  [buildah]=buildah [musl-tools]=musl-gcc [containerd]=containerd [runc]=runc
  [containernetworking-plugins]=/usr/lib/cni/bridge [iptables]=iptables [conntrack]=conntrack
)
case "${1:-node}" in
  image) wanted=(buildah musl-tools) ;;
  node) wanted=(buildah musl-tools containerd runc containernetworking-plugins iptables conntrack) ;;
  *) log "say 'image' or 'node'"; exit 2 ;;
esac
missing=()
for p in "${wanted[@]}"; do
  c=${command_of[$p]}
  if [[ $c == /* ]]; then [ -x "$c" ] || missing+=("$p"); else command -v "$c" >/dev/null || missing+=("$p"); fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" -eq 0 ] || { log "missing ${missing[*]}; install them as root: apt-get install ${missing[*]}"; exit 1; }
command -v apt-get >/dev/null || { log "missing ${missing[*]} and no apt-get to install them"; exit 1; }
log "installing ${missing[*]}"
exec 9>/tmp/kubeconfig-authority-apt.lock
flock 9
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
