#!/usr/bin/env bash
# Builds a single-binary OCI image without a daemon, reproducibly, and writes it as an OCI
# archive. Prints the image's digest (of its manifest) on stdout.
#
#   build.sh <static binary> <name:tag> <archive> [label=value ...]
#
# - buildah (Debian's package) builds from scratch: the binary at /<its file name>, mode 0555,
#   owned by root, run as the numeric user 65532:65532 with the binary as entrypoint. Nothing
#   else is in the image: no shell, no package manager, no libc.
# - Reproducible: every timestamp (the layer's files, the config's created time, the history) is
#   SOURCE_DATE_EPOCH (default 0), buildah's own version label is left out where it can be, and
#   the storage is a fresh folder of this build's, removed at the end; the same binary and
#   labels give the same digest.
set -euo pipefail
log() { echo "image: $*" >&2; }
[ $# -ge 3 ] || { log "usage: $0 <static binary> <name:tag> <archive> [label=value ...]"; exit 2; }
binary=$1 name=$2 archive=$3
shift 3
[ -x "$binary" ] || { log "$binary is not an executable file"; exit 1; }
command -v buildah >/dev/null || { log "buildah is needed: apt-get install buildah"; exit 1; }
if file "$binary" 2>/dev/null | grep -q "dynamically linked"; then
  log "$binary is dynamically linked; a scratch image needs a static binary"; exit 1
fi

epoch=${SOURCE_DATE_EPOCH:-0}
storage=$(mktemp -d "${TMPDIR:-/tmp}/image-build.XXXXXX")
bh() { buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs "$@"; }
cleanup() { bh rm --all >/dev/null 2>&1 || true; rm -rf "$storage"; }
trap cleanup EXIT

entry=/$(basename "$binary")
container=$(bh from --quiet scratch)
install -D -m 0555 "$binary" "$storage/rootfs$entry"
touch -h -d "@$epoch" "$storage/rootfs$entry"
bh copy --quiet "$container" "$storage/rootfs$entry" "$entry" >/dev/null
config=(--entrypoint "[\"$entry\"]" --cmd "" --user 65532:65532 --workingdir /
  --os linux --arch amd64 --created-by "config/image/build.sh")
for label in "$@"; do config+=(--label "$label" --annotation "$label"); done
bh config "${config[@]}" "$container"
identity=()
bh commit --help 2>/dev/null | grep -q -- --identity-label && identity=(--identity-label=false)
bh commit --quiet --format oci --timestamp "$epoch" "${identity[@]}" --rm "$container" "$name" >/dev/null
mkdir -p "$(dirname "$archive")"
rm -f "$archive"
bh push --quiet --format oci --digestfile "$storage/digest" "$name" "oci-archive:$archive:$name" >&2
digest=$(cat "$storage/digest")
log "$name $digest -> $archive ($(du -h "$archive" | cut -f1))"
echo "$digest"
