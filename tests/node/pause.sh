#!/usr/bin/env bash
# The test node's pause image: pause.c, built static with musl-gcc, in an image made by
# config/image/build.sh like the controller's. Cached by the source's hash; prints the path of
# the OCI archive (named localhost/pause:kubeconfig-authority).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${KUBECONFIG_AUTHORITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeconfig-authority}
sum=$(cat "$here/pause.c" "$here/../../config/image/build.sh" | sha256sum | cut -c1-16)
archive="$cache_root/node/pause-$sum.oci.tar"
if [ ! -s "$archive" ]; then
  "$here/packages.sh" image
  mkdir -p "$cache_root/node"
  work=$(mktemp -d "$cache_root/node/pause.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  musl-gcc -static -Os -s -o "$work/pause" "$here/pause.c"
  "$here/../../config/image/build.sh" "$work/pause" localhost/pause:kubeconfig-authority \
    "$work/pause.oci.tar" >/dev/null
  mv "$work/pause.oci.tar" "$archive"
fi
echo "$archive"
