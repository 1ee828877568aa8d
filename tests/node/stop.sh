#!/usr/bin/env bash
# Stops a node started by start.sh (beside this script) and removes what it left on the host:
# its containers and processes, its namespaces (with its iptables rules, bridge, veths and
# mounts), its cgroups, the host's end of its link, the folders start.sh created. Safe to run
# twice, and on a node that half started.
#
#   stop.sh <dir> [N holder-pid]
#
# N and the holder's pid, when given (the watchdog gives them), stop the node even if its
# folder is gone.
set -uo pipefail
dir=$1
N=${2:-}
holder=${3:-}
# shellcheck source=/dev/null
[ -f "$dir/env" ] && source "$dir/env"
[ -n "$N" ] || exit 0
if [ -d "$dir" ]; then
  exec 9>"$dir/.stop.lock"
  flock 9
fi
log() { echo "node: $*" >&2; }
cgroup_root=kubeconfig-authority-node-$N link=kanode$N

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
# The program, or setsid/nsenter on its way to it.
named() {
  local comm
  comm=$(cat "/proc/$1/comm" 2>/dev/null)
  [ "$comm" = "$2" ] || [ "$comm" = setsid ] || [ "$comm" = nsenter ]
}
[ -f "$dir/holder.pid" ] && holder=$(cat "$dir/holder.pid")
# The holder only while it is still the sleep of our namespaces (a pid can be reused).
alive "$holder" && named "$holder" sleep || holder=

# The watchdog first (it would run this script again), then kubelet, so that it restarts nothing.
watchdog=$(cat "$dir/watchdog.pid" 2>/dev/null || true)
[ "$watchdog" != "${PPID:-}" ] && alive "$watchdog" && named "$watchdog" sh && kill "$watchdog" 2>/dev/null
while read -r pid name; do
  comm=${name:0:15}
  alive "$pid" && named "$pid" "$comm" && kill -TERM "$pid" 2>/dev/null
done < <(tac "$dir/pids" 2>/dev/null)
sleep 1

# Every process of the node's pods (their cgroups), then every process left in the node's mount
# namespace (containerd's shims among them), then the holder.
for _ in 1 2 3; do
  for procs in /sys/fs/cgroup/*/"$cgroup_root"; do
    [ -d "$procs" ] && find "$procs" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  done
  if [ -n "$holder" ]; then
    ns=$(readlink "/proc/$holder/ns/mnt")
    for p in /proc/[0-9]*; do
      pid=${p#/proc/}
      [ "$pid" = "$holder" ] && continue
      [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && kill -KILL "$pid" 2>/dev/null
    done
  fi
  sleep 0.3
done
while read -r pid name; do
  comm=${name:0:15}
  alive "$pid" && named "$pid" "$comm" && kill -KILL "$pid" 2>/dev/null
done < <(cat "$dir/pids" 2>/dev/null)
[ -n "$holder" ] && kill -KILL "$holder" 2>/dev/null
[ -d "$dir" ] && : >"$dir/pids"

# Cgroups, deepest first (a cgroup is removed once its processes are gone).
for _ in $(seq 50); do
  left=0
  for root in /sys/fs/cgroup/*/"$cgroup_root"; do
    [ -d "$root" ] || continue
    find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$root" ] && left=1
  done
  [ $left = 0 ] && break
  sleep 0.1
done
[ $left = 0 ] || log "cgroups left under /sys/fs/cgroup/*/$cgroup_root"

# The host's end of the link goes with the node's network namespace; remove it if it did not.
for _ in $(seq 50); do ip link show "$link" >/dev/null 2>&1 || break; sleep 0.1; done
ip link del "$link" 2>/dev/null
# The folders start.sh made for the node's tmpfs mounts (recorded; empty ones of those names
# when the record is gone).
created=$(cat "$dir/created" 2>/dev/null || echo /var/lib/cni /var/log/containers)
for d in $created; do rmdir "$d" 2>/dev/null; done
[ -d "$dir" ] && : >"$dir/created"
exit 0
