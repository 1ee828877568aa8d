#!/usr/bin/env bash
# Builds the real control plane the integration tests run against (etcd, kube-apiserver,
# kube-controller-manager) from the upstream Go modules through the Go module proxy, and caches
# the binaries outside the work tree, keyed by version. Prints the folder that holds them.
#
#   build.sh        the control plane
#   build.sh node   a node's binaries: kubelet, kube-scheduler, kube-proxy, and kubectl (same
#                   Kubernetes version, same wrapper module, same Go build cache)
#
# - The versions are pinned in versions.env beside this script, and nowhere else.
# - If KUBEBUILDER_ASSETS is set (the setup-envtest convention), those binaries are used and
#   nothing is built.
# - A second run finds the cache and returns at once; concurrent runs wait on a lock.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"


set_name=${1:-controlplane}
log() { echo "$set_name: $*" >&2; }
case "$set_name" in
  controlplane | node) ;;
  *) log "unknown set '$set_name': say nothing (the control plane) or 'node'"; exit 2 ;;
esac

if [ "$set_name" = controlplane ] && [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  for b in etcd kube-apiserver; do
    [ -x "$KUBEBUILDER_ASSETS/$b" ] || { log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $b; unset it to build the pinned versions"; exit 1; }
  done
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

cache_root=${KUBECONFIG_AUTHORITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeconfig-authority}
if [ "$set_name" = controlplane ]; then
  dest="$cache_root/controlplane/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION"
  binaries=(etcd kube-apiserver kube-controller-manager)
  kubernetes_commands=(kube-apiserver kube-controller-manager)
else
  dest="$cache_root/node/kubernetes-$KUBERNETES_VERSION"
  binaries=(kubelet kube-scheduler kube-proxy kubectl)
  kubernetes_commands=(kubelet kube-scheduler kube-proxy kubectl)
fi

have_all() { for b in "${binaries[@]}"; do [ -x "$dest/$b" ] || return 1; done; }
if have_all; then echo "$dest"; exit 0; fi

command -v go >/dev/null || { log "Go is needed to build the $set_name binaries (or set KUBEBUILDER_ASSETS)"; exit 1; }
mkdir -p "$cache_root/$set_name"
exec 9>"$cache_root/$set_name/.build.lock"
flock 9
if have_all; then echo "$dest"; exit 0; fi

work=$(mktemp -d "$cache_root/$set_name/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
start=$(date +%s)

# kubernetes: its go.mod replaces the k8s.io/* staging modules with folders of its own tree, which
# a dependent module cannot see. A small wrapper module pins each of them to the published
# version of the same release (v1.35.4 -> v0.35.4).
staging_version="v0.${KUBERNETES_VERSION#v1.}"
log "fetching k8s.io/kubernetes@$KUBERNETES_VERSION"
gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9.-]*\) => ./staging/.*#\1#p' "$gomod")
[ ${#staging[@]} -gt 10 ] || { log "could not read the staging modules from $gomod"; exit 1; }
mkdir -p "$work/kubernetes"
{
  echo "module kubeconfig-authority.dev/controlplane/kubernetes"
  echo
  echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
  echo
  echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	$m => $m $staging_version"; done
  echo ")"
} >"$work/kubernetes/go.mod"
{
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for b in "${kubernetes_commands[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
  printf ')\n'
} >"$work/kubernetes/tools.go"
version_pkg=k8s.io/component-base/version
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X $version_pkg.gitVersion=$KUBERNETES_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"
(
  cd "$work/kubernetes"
  log "resolving kubernetes dependencies"
  go mod tidy >&2
  for b in "${kubernetes_commands[@]}"; do
    log "building $b $KUBERNETES_VERSION"
    go build -trimpath -ldflags "$ldflags" -o "$work/out/$b" "k8s.io/kubernetes/cmd/$b"
  done
)

# etcd: the server module's main package is the etcd binary. The same wrapper trick, since its
# go.mod replaces its sibling modules with relative paths.
if [ "$set_name" = controlplane ]; then
mkdir -p "$work/etcd"
cat >"$work/etcd/go.mod" <<EOF
module kubeconfig-authority.dev/controlplane/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
cat >"$work/etcd/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
(
  cd "$work/etcd"
  log "building etcd $ETCD_VERSION"
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$work/out/etcd" go.etcd.io/etcd/server/v3
)
fi

mkdir -p "$dest"
for b in "${binaries[@]}"; do mv "$work/out/$b" "$dest/$b"; done
log "built in $(( $(date +%s) - start )) s into $dest"
echo "$dest"
