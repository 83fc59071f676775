#!/usr/bin/env bash
# A test bed of hosts in network namespaces (DESIGN §15): one coordinator and N backends, each
# in a namespace of its own with its own address on a bridge in 198.18.0.0/15 (RFC 2544, the
# benchmarking range; no other range is ever used), all sharing one file registry directory.
#
#   netns-cluster.sh up N [--tag T] [--net 198.18.77] [--registry DIR] [--bin PATH] [-- NODE_ARGS...]
#   netns-cluster.sh down [--tag T]            remove every namespace, link and process of T
#   netns-cluster.sh start HOST [--tag T] [-- NODE_ARGS...]   (re)start the node of HOST
#   netns-cluster.sh stop HOST [--tag T]       SIGTERM the node of HOST and wait for it
#   netns-cluster.sh exec HOST [--tag T] -- CMD...            run CMD inside HOST's namespace
#   netns-cluster.sh cut HOST | heal HOST      take HOST's link down / up (the whole host)
#   netns-cluster.sh blackhole HOST IP | unblackhole HOST IP  drop one path, inside HOST
#   netns-cluster.sh status [--tag T]          hosts, addresses, pids
#
# HOST is `c` (the coordinator) or `b1` … `bN`. The coordinator gets NET.10, backend k NET.(10+k),
# the bridge NET.1 in the root namespace, so tests on this machine reach every host directly.
# Each node runs with --bind-ip and --advertise-ip set to its own address and the default-style
# ports (coordinator 8082-8084, every backend 9000-9002: ids stay unique because the advertise
# IP is not loopback). NODE_ARGS go to every node (e.g. TLS or health flags); a file
# /tmp/colony-netns-T/hosts/HOST.args, one argument per line, adds arguments for one host only
# (write it before `up` for the first start, or before `start`).
# Logs and pids live in the state directory /tmp/colony-netns-T/.
set -euo pipefail

die() { echo "netns-cluster: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces need CAP_NET_ADMIN)"
command -v ip >/dev/null || die "the ip command (iproute2) is missing: apt-get install iproute2"
ip netns list >/dev/null 2>&1 || die "ip netns does not work here (no network namespace support)"

cmd="${1:-}"
[ -n "$cmd" ] || die "usage: $0 up N | down | start HOST | stop HOST | exec HOST -- CMD | cut HOST | heal HOST | blackhole HOST IP | unblackhole HOST IP | status"
shift

tag="colony"
net="198.18.77"
registry=""
bin=""
count=""
host=""
peer=""
node_args=()
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --net) net="$2"; shift 2 ;;
    --registry) registry="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --) shift; node_args=("$@"); break ;;
    *) positional+=("$1"); shift ;;
  esac
done

# Guards: a short tag (interface names are at most 15 bytes) and an address inside 198.18.0.0/15.
[[ "$tag" =~ ^[a-z0-9]{1,8}$ ]] || die "--tag must be 1-8 lowercase letters or digits, got '$tag'"
if [[ "$net" =~ ^198\.(18|19)\.([0-9]{1,3})$ ]] && [ "${BASH_REMATCH[2]}" -le 255 ]; then :; else
  die "--net must be 198.18.X or 198.19.X (RFC 2544 benchmarking range), got '$net'"
fi

state="/tmp/colony-netns-$tag"
bridge="${tag}-br"
ns_of() { echo "${tag}-$1"; }
ip_of() {
  case "$1" in
    c) echo "$net.10" ;;
    b[0-9]*) local k="${1#b}"; [ "$k" -ge 1 ] && [ "$k" -le 200 ] || die "no host $1"; echo "$net.$((10 + k))" ;;
    *) die "unknown host '$1' (c, b1, b2, …)" ;;
  esac
}
veth_of() { echo "${tag}-$1"; }           # the root-namespace end, on the bridge
check_host() { [ -n "$1" ] && ip netns list | grep -qw "$(ns_of "$1")" || die "no host '$1' in test bed '$tag'"; }

colony_bin() {
  if [ -n "$bin" ]; then echo "$bin"; return; fi
  if [ -f "$state/bin" ]; then cat "$state/bin"; return; fi
  local here; here="$(cd "$(dirname "$0")/.." && pwd)"
  echo "$here/target/debug/colony"
}

node_start() {
  local h="$1"; shift
  local ns addr role bin_path pidfile log
  ns="$(ns_of "$h")"; addr="$(ip_of "$h")"
  bin_path="$(colony_bin)"
  [ -x "$bin_path" ] || die "colony binary not found at $bin_path (build it, or pass --bin)"
  pidfile="$state/$h.pid"; log="$state/$h.log"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "host $h already runs a node (pid $(cat "$pidfile"))"
  fi
  local ports
  if [ "$h" = c ]; then role=coordinator; ports=(--internal-port 8082 --http-port 8083 --mgmt-port 8084)
  else role=backend; ports=(--internal-port 9000 --http-port 9001 --mgmt-port 9002); fi
  local extra=()
  if [ -f "$state/hosts/$h.args" ]; then mapfile -t extra < "$state/hosts/$h.args"; fi
  local saved=()
  if [ -f "$state/node.args" ]; then mapfile -t saved < "$state/node.args"; fi
  # setsid: the node is not in the caller's process group, so a Ctrl-C aimed at the caller
  # does not reach it; `down` stops it by pid.
  ip netns exec "$ns" setsid "$bin_path" "$role" --bind-ip "$addr" --advertise-ip "$addr" \
    "${ports[@]}" --registry file --registry-dir "$(cat "$state/registry.path")" \
    "${saved[@]}" "${extra[@]}" "$@" >>"$log" 2>&1 </dev/null &
  echo $! > "$pidfile"
}

node_stop() {
  local h="$1" pidfile="$state/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

wait_port() {
  local addr="$1" port="$2" what="$3"
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "$what did not listen on $addr:$port within 10 s; see $state/*.log"
}

case "$cmd" in
  up)
    count="${positional[0]:-}"
    [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le 200 ] || die "up needs N, the number of backends (1-200)"
    # The state directory may already hold per-host arguments (hosts/HOST.args); a test bed
    # that was brought up (even half-way) has its count file.
    if [ -e "$state/count" ]; then die "test bed '$tag' exists ($state): run '$0 down --tag $tag' first"; fi
    mkdir -p "$state/hosts"
    if [ -z "$registry" ]; then registry="$state/registry"; fi
    mkdir -p "$registry"
    echo "$registry" > "$state/registry.path"
    echo "$(colony_bin)" > "$state/bin"
    printf '%s\n' "${node_args[@]+"${node_args[@]}"}" | sed '/^$/d' > "$state/node.args"
    echo "$count" > "$state/count"
    # The bridge lives in the root namespace with NET.1, so this machine reaches every host.
    ip link add "$bridge" type bridge
    ip addr add "$net.1/24" dev "$bridge"
    ip link set "$bridge" up
    for h in c $(seq -f 'b%g' 1 "$count"); do
      ns="$(ns_of "$h")"; v="$(veth_of "$h")"
      ip netns add "$ns"
      ip link add "$v" type veth peer name eth0 netns "$ns"
      ip link set "$v" master "$bridge" up
      ip -n "$ns" addr add "$(ip_of "$h")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    done
    node_start c
    wait_port "$(ip_of c)" 8084 "the coordinator"
    for h in $(seq -f 'b%g' 1 "$count"); do node_start "$h"; done
    for h in $(seq -f 'b%g' 1 "$count"); do wait_port "$(ip_of "$h")" 9002 "backend $h"; done
    echo "test bed '$tag' is up: coordinator $(ip_of c) (8082-8084), $count backends $(ip_of b1)… (9000-9002), registry $registry, logs $state"
    ;;
  down)
    # Whatever exists of the tag goes, even after a half-finished `up`.
    for pidfile in "$state"/*.pid; do
      [ -e "$pidfile" ] || continue
      h="$(basename "$pidfile" .pid)"
      node_stop "$h"
    done
    # Any process still inside one of our namespaces (a child a node started, say).
    for ns in $(ip netns list | awk '{print $1}' | grep "^${tag}-" || true); do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns delete "$ns" 2>/dev/null || true
    done
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^${tag}-" || true); do
      ip link delete "$link" 2>/dev/null || true
    done
    rm -rf "$state"
    echo "test bed '$tag' is down"
    ;;
  start)
    host="${positional[0]:-}"; check_host "$host"
    node_start "$host" "${node_args[@]+"${node_args[@]}"}"
    ;;
  stop)
    host="${positional[0]:-}"; check_host "$host"
    node_stop "$host"
    ;;
  exec)
    host="${positional[0]:-}"; check_host "$host"
    [ ${#node_args[@]} -gt 0 ] || die "exec needs a command after --"
    exec ip netns exec "$(ns_of "$host")" "${node_args[@]}"
    ;;
  cut|heal)
    host="${positional[0]:-}"; check_host "$host"
    if [ "$cmd" = cut ]; then ip link set "$(veth_of "$host")" down; else ip link set "$(veth_of "$host")" up; fi
    ;;
  blackhole|unblackhole)
    host="${positional[0]:-}"; peer="${positional[1]:-}"; check_host "$host"
    [[ "$peer" =~ ^198\.(18|19)\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "$cmd needs the peer's address in 198.18.0.0/15, got '$peer'"
    if [ "$cmd" = blackhole ]; then ip -n "$(ns_of "$host")" route add blackhole "$peer/32"
    else ip -n "$(ns_of "$host")" route del blackhole "$peer/32"; fi
    ;;
  status)
    [ -d "$state" ] || die "no test bed '$tag'"
    for h in c $(seq -f 'b%g' 1 "$(cat "$state/count")"); do
      pid="-"; [ -f "$state/$h.pid" ] && pid="$(cat "$state/$h.pid")"
      alive="stopped"; [ "$pid" != "-" ] && kill -0 "$pid" 2>/dev/null && alive="running"
      printf '%-4s %-15s %-8s %s\n' "$h" "$(ip_of "$h")" "$pid" "$alive"
    done
    ;;
  *) die "unknown command '$cmd'" ;;
esac
