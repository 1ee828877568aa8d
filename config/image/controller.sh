#!/usr/bin/env bash
# `make image`: the controller's image, as an OCI archive. Builds the release binary static
# (the musl target: its own DNS resolver, no libc needed at run time; jemalloc as the
# allocator, as in every build), then the image with build.sh beside this script. Prints the
# archive's path and the image's digest.
#
# Environment: IMAGE (default localhost/kubeconfig-authority), TAG (default the crate's
# version), ARCHIVE (default target/image/kubeconfig-authority.oci.tar), CARGO.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
log() { echo "image: $*" >&2; }
target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
image=${IMAGE:-localhost/kubeconfig-authority}:${TAG:-$version}
archive=${ARCHIVE:-target/image/kubeconfig-authority.oci.tar}

tests/node/packages.sh image
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  log "adding the Rust target $target"
  rustup target add "$target" >&2
fi
# The same commit gives the same bytes: symbols stripped, the Cargo home (registry sources)
# named by a fixed path; the workspace's own paths are relative already.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
RUSTFLAGS="-C strip=symbols --remap-path-prefix=$cargo_home=/cargo" \
  "${CARGO:-cargo}" build --quiet --release --locked --target "$target" --bin kubeconfig-authority

binary=${CARGO_TARGET_DIR:-target}/$target/release/kubeconfig-authority

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then revision="$revision-dirty"; fi
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
license=$(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml | head -1)
source_url=$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -1)
digest=$(SOURCE_DATE_EPOCH=$epoch "$here/build.sh" "$binary" "$image" "$archive" \
  "org.opencontainers.image.title=kubeconfig-authority" \
  "org.opencontainers.image.description=Issues kubeconfigs: a Kubernetes controller" \
  "org.opencontainers.image.source=$source_url" \
  "org.opencontainers.image.version=$version" \
  "org.opencontainers.image.revision=$revision" \
  "org.opencontainers.image.created=$created" \
  "org.opencontainers.image.licenses=$license")
echo "$archive $image@$digest"
