#!/usr/bin/env bash
# Builds the tools some tests need from their upstream Go modules through the Go module proxy,
# and caches them outside the work tree, keyed by version. Prints the folder that holds them.
# A second run finds the cache and returns at once; concurrent runs wait on a lock.
#
#   build.sh          helm and promtool
#   build.sh flux     Flux's source-controller and kustomize-controller (one wrapper module,
#                     one build), and their CRDs from the modules' own files
#   build.sh argocd   argocd-cluster: ./argocd/main.go on Argo CD's published module
#   build.sh certmanager
#                     cert-manager's controller for the side-by-side bench:
#                     ./certmanager/main.go on cert-manager's published module, and its
#                     CRDs from that module's files
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
set_name=${1:-helm}
log() { echo "tools: $*" >&2; }

cache_root=${KUBECONFIG_AUTHORITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeconfig-authority}
case "$set_name" in
  helm)
    dest="$cache_root/tools/helm-$HELM_VERSION-prometheus-$PROMETHEUS_MODULE_VERSION"
    wanted=(helm promtool) ;;
  flux)
    dest="$cache_root/tools/flux-source-$FLUX_SOURCE_CONTROLLER_VERSION-kustomize-$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
    wanted=(source-controller kustomize-controller crds) ;;
  argocd)
    # Keyed by the program and its module file (which pins Argo CD's version).
    key=$(cat "$here/argocd/go.mod" "$here/argocd/main.go" | sha256sum | cut -c1-16)
    dest="$cache_root/tools/argocd-cluster-$key"
    wanted=(argocd-cluster) ;;
  certmanager)
    key=$(cat "$here/certmanager/go.mod" "$here/certmanager/main.go" | sha256sum | cut -c1-16)
    dest="$cache_root/tools/cert-manager-$key"
    wanted=(cert-manager crds) ;;
  *) log "unknown set $set_name (helm, flux, argocd, certmanager)"; exit 2 ;;
esac
have_all() { local w; for w in "${wanted[@]}"; do [ -e "$dest/$w" ] || return 1; done; }
if have_all; then echo "$dest"; exit 0; fi

command -v go >/dev/null || { log "Go is needed to build $set_name"; exit 1; }
mkdir -p "$cache_root/tools"
exec 9>"$cache_root/tools/.build-$set_name.lock"
flock 9
if have_all; then echo "$dest"; exit 0; fi

work=$(mktemp -d "$cache_root/tools/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
mkdir -p "$work/out"

build() { # name module package version
  local name=$1 module=$2 package=$3 version=$4 started
  started=$(date +%s)
  mkdir -p "$work/$name"
  (
    cd "$work/$name"
    go mod init "kubeconfig-authority.tools/$name" >/dev/null 2>&1
    go get "$module@$version" >/dev/null
    go build -trimpath -ldflags=-s -o "$work/out/$name" "$package"
  )
  log "built $name $version in $(( $(date +%s) - started ))s"
}

case "$set_name" in
  helm)
    build helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
    build promtool github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_MODULE_VERSION"
    ;;
  flux)
    started=$(date +%s)
    mkdir -p "$work/flux"
    (
      cd "$work/flux"
      go mod init kubeconfig-authority.tools/flux >/dev/null 2>&1
      # The replace lines are those of the controllers' own go.mod files (a dependency's
      # replaces do not apply), and one version the proxy serves in place of a refused one.
      go mod edit \
        -require "github.com/fluxcd/source-controller@$FLUX_SOURCE_CONTROLLER_VERSION" \
        -require "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE_CONTROLLER_VERSION" \
        -replace "github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@$FLUX_PKG_ARTIFACT_VERSION" \
        -replace "github.com/opencontainers/go-digest=github.com/opencontainers/go-digest@$FLUX_GO_DIGEST_VERSION" \
        -replace "sigs.k8s.io/kustomize/api=sigs.k8s.io/kustomize/api@$FLUX_KUSTOMIZE_VERSION" \
        -replace "sigs.k8s.io/kustomize/kyaml=sigs.k8s.io/kustomize/kyaml@$FLUX_KUSTOMIZE_VERSION" \
        -replace "gopkg.in/yaml.v3=gopkg.in/yaml.v3@v3.0.1"
      go build -trimpath -ldflags=-s -o "$work/out/" \
        github.com/fluxcd/source-controller github.com/fluxcd/kustomize-controller
      mkdir -p "$work/out/crds"
      for module in source-controller kustomize-controller; do
        dir=$(go list -m -f '{{.Dir}}' "github.com/fluxcd/$module")
        cp "$dir"/config/crd/bases/*.yaml "$work/out/crds/"
      done
    )
    log "built Flux's source-controller $FLUX_SOURCE_CONTROLLER_VERSION and kustomize-controller $FLUX_KUSTOMIZE_CONTROLLER_VERSION in $(( $(date +%s) - started ))s"
    ;;
  argocd)
    started=$(date +%s)
    cp -r "$here/argocd" "$work/argocd"
    (cd "$work/argocd" && go build -trimpath -ldflags=-s -o "$work/out/argocd-cluster" .)
    log "built argocd-cluster ($(grep -m1 'argoproj/argo-cd' "$here/argocd/go.mod" | xargs)) in $(( $(date +%s) - started ))s"
    ;;
  certmanager)
    started=$(date +%s)
    cp -r "$here/certmanager" "$work/certmanager"
    (
      cd "$work/certmanager"
      go build -trimpath -ldflags=-s -o "$work/out/cert-manager" .
      mkdir -p "$work/out/crds"
      cp "$(go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"/deploy/crds/*.yaml "$work/out/crds/"
    )
    log "built cert-manager's controller ($(grep -m1 'cert-manager/cert-manager ' "$here/certmanager/go.mod" | xargs)) in $(( $(date +%s) - started ))s"
    ;;
esac
rm -rf "$dest.tmp" && mv "$work/out" "$dest.tmp" && mv "$dest.tmp" "$dest"
echo "$dest"
