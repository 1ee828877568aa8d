#!/usr/bin/env bash
# Builds helm and promtool from their upstream Go modules through the Go module proxy, and
# caches them outside the work tree, keyed by version. Prints the folder that holds them.
# A second run finds the cache and returns at once; concurrent runs wait on a lock.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
log() { echo "tools: $*" >&2; }

cache_root=${KUBECONFIG_AUTHORITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeconfig-authority}
dest="$cache_root/tools/helm-$HELM_VERSION-prometheus-$PROMETHEUS_MODULE_VERSION"
have_all() { [ -x "$dest/helm" ] && [ -x "$dest/promtool" ]; }
if have_all; then echo "$dest"; exit 0; fi

command -v go >/dev/null || { log "Go is needed to build helm and promtool"; exit 1; }
mkdir -p "$cache_root/tools"
exec 9>"$cache_root/tools/.build.lock"
flock 9
if have_all; then echo "$dest"; exit 0; fi

work=$(mktemp -d "$cache_root/tools/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

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
mkdir -p "$work/out"
build helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
build promtool github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_MODULE_VERSION"
rm -rf "$dest.tmp" && mv "$work/out" "$dest.tmp" && mv "$dest.tmp" "$dest"
echo "$dest"
