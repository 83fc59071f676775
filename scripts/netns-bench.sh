#!/usr/bin/env bash
# Cluster ticks/s with TLS against plaintext on the network-namespace test bed (issue 15):
# two beds of one coordinator and N backends each (scripts/netns-cluster.sh), one plaintext
# and one with TLS on every node (`colony certs`, a certificate per host address), up side by
# side; the same world runs on each in turn, REPEAT times, interleaved (plain, tls, tls, plain,
# …), so both see the same machine load. Reports, does not assert: a table of ticks/s per run,
# the medians and their ratio. The two beds must end at the same population and fingerprint.
#
#   sudo scripts/netns-bench.sh [--bin PATH] [--backends N] [--ticks K] [--warmup W] [--repeat R]
#                               [--world JSON]
#
# Defaults: target/release/colony, 3 backends, 1000 timed ticks after 200 warm-up ticks per
# run, 5 repeats, the default world of DESIGN §3 (8 × 5 shards of 250 × 250). A run's time is
# from its POST /colony/run to the coordinator reporting the run's last tick (polled every
# 20 ms), so it includes one request and at most one poll interval.
# Both beds come down on exit, whatever ends the script.
set -euo pipefail

die() { echo "netns-bench: $*" >&2; exit 2; }

here="$(cd "$(dirname "$0")/.." && pwd)"
bed="$here/scripts/netns-cluster.sh"
bin="$here/target/release/colony"
backends=3
ticks=1000
warmup=200
repeat=5
world='{}'
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --backends) backends="$2"; shift 2 ;;
    --ticks) ticks="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --world) world="$2"; shift 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces)"
[ -x "$bin" ] || die "no colony binary at $bin (cargo build --release, or --bin)"
for tool in curl jq; do command -v "$tool" >/dev/null || die "$tool is missing"; done
[[ "$ticks" =~ ^[0-9]+$ && "$warmup" =~ ^[0-9]+$ && "$repeat" =~ ^[0-9]+$ ]] || die "--ticks, --warmup, --repeat take numbers"
echo "$world" | jq -e 'type == "object"' >/dev/null || die "--world must be a JSON object"

# Two nets of 198.18.0.0/15 no bridge on this machine uses yet.
used="$(ip -o -4 addr show | grep -o '198\.1[89]\.[0-9]*\.' || true)"
nets=()
for x in $(seq 200 250); do
  grep -qF "198.18.$x." <<<"$used" || nets+=("198.18.$x")
  [ ${#nets[@]} -eq 2 ] && break
done
[ ${#nets[@]} -eq 2 ] || die "no two free /24s in 198.18.200-250"
tags=(bnplain bntls)
declare -A net_of=([bnplain]="${nets[0]}" [bntls]="${nets[1]}")

work="$(mktemp -d /tmp/colony-netns-bench.XXXXXX)"
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export COLONY_OPERATOR_TOKEN="$token"
cleanup() {
  for t in "${tags[@]}"; do bash "$bed" down --tag "$t" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in "${tags[@]}"; do
  [ -e "/tmp/colony-netns-$t" ] && die "test bed '$t' exists: sudo $bed down --tag $t"
done

# The TLS bed: a CA and a certificate per host (IP SAN = its address); each node gets its own.
tls_net="${net_of[bntls]}"
certs=(--node "c:$tls_net.10")
for k in $(seq 1 "$backends"); do certs+=(--node "b$k:$tls_net.$((10 + k))"); done
"$bin" certs --out "$work/tls" "${certs[@]}" >/dev/null
mkdir -p /tmp/colony-netns-bntls/hosts
for h in c $(seq -f 'b%g' 1 "$backends"); do
  printf '%s\n' --tls-cert "$work/tls/$h.pem" --tls-key "$work/tls/$h-key.pem" --tls-ca "$work/tls/ca.pem" \
    > "/tmp/colony-netns-bntls/hosts/$h.args"
done

for t in "${tags[@]}"; do
  mkdir -p "$work/$t-registry"
  bash "$bed" up "$backends" --tag "$t" --net "${net_of[$t]}" --registry "$work/$t-registry" --bin "$bin" >/dev/null
done

# curl against bed $1's coordinator: $2 is the port, $3 the path, the rest curl's.
api() {
  local t="$1" port="$2" path="$3"; shift 3
  local scheme=http tls=()
  if [ "$t" = bntls ]; then scheme=https; tls=(--cacert "$work/tls/ca.pem"); fi
  curl -sS --fail-with-body --max-time 30 "${tls[@]}" -H "Authorization: Bearer $token" \
    "$@" "$scheme://${net_of[$t]}.10:$port$path"
}
colony() { api "$1" 8083 /colony; }

# Every backend of bed $1 ACTIVE, within 30 s.
wait_active() {
  local t="$1" n
  for _ in $(seq 1 300); do
    n="$(api "$t" 8084 /health/status 2>/dev/null | jq '[.components[] | select((.type | ascii_downcase) == "backend" and .status == "ACTIVE")] | length' 2>/dev/null || echo 0)"
    [ "$n" -ge "$backends" ] && return 0
    sleep 0.1
  done
  die "bed $t: only $n of $backends backends ACTIVE after 30 s; logs in /tmp/colony-netns-$t/"
}

# Runs $2 more ticks on bed $1 and waits for the last; prints the seconds it took.
run_ticks() {
  local t="$1" n="$2" target started state now
  target=$(( $(colony "$t" | jq '.tick') + n ))
  started="$(date +%s.%N)"
  api "$t" 8083 /colony/run -XPOST -H 'Content-Type: application/json' -d "{\"ticks\":$n}" >/dev/null
  while :; do
    now="$(colony "$t")"
    state="$(jq -r .state <<<"$now")"
    [ "$state" = failed ] && die "bed $t: the run failed: $now"
    [ "$state" = idle ] && [ "$(jq .tick <<<"$now")" -ge "$target" ] && break
    sleep 0.02
  done
  echo "$(date +%s.%N) - $started" | bc -l
}

# A fresh colony of the world on bed $1, on every backend: each run times the same ticks
# of the same world (a colony left running settles into still lifes and blinkers, whose
# ticks cost far less than the first thousand).
start_colony() {
  local t="$1" placed
  api "$t" 8083 /colony-start -XPOST -H 'Content-Type: application/json' \
    -d "$(jq -c '. + {restart: true}' <<<"$world")" >/dev/null
  placed="$(api "$t" 8083 /topology | jq '[.placement[].instance_id] | unique | length')"
  [ "$placed" -eq "$backends" ] || die "bed $t: shards on $placed backends, not $backends"
}

for t in "${tags[@]}"; do
  wait_active "$t"
done
start_colony bnplain
size="$(api bnplain 8083 /topology | jq -r '"\(.width_in_shards)x\(.height_in_shards) shards of \(.shard_width)x\(.shard_height)"' 2>/dev/null || echo "?")"
echo "world: $size on $backends backends per bed; $repeat runs, each a fresh colony timed over ticks $warmup..$((warmup + ticks)); plain and tls interleaved, ABBA"
printf '%-4s %-6s %10s %10s\n' run bed seconds ticks/s
declare -A rates=([bnplain]="" [bntls]="")
for r in $(seq 1 "$repeat"); do
  # ABBA: which bed goes first alternates, so neither always runs right after the other.
  order=("${tags[@]}")
  [ $((r % 2)) -eq 0 ] && order=("${tags[1]}" "${tags[0]}")
  for t in "${order[@]}"; do
    start_colony "$t"
    [ "$warmup" -gt 0 ] && run_ticks "$t" "$warmup" >/dev/null
    secs="$(run_ticks "$t" "$ticks")"
    rate="$(echo "$ticks / $secs" | bc -l)"
    rates[$t]+="$rate "
    printf '%-4s %-6s %10.2f %10.1f\n' "$r" "${t#bn}" "$secs" "$rate"
  done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
range() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.1f-%.1f", lo, hi}'; }
mp="$(median <<<"${rates[bnplain]}")"; mt="$(median <<<"${rates[bntls]}")"
printf 'plain: median %.1f ticks/s (range %s)\n' "$mp" "$(range <<<"${rates[bnplain]}")"
printf 'tls:   median %.1f ticks/s (range %s)\n' "$mt" "$(range <<<"${rates[bntls]}")"
printf 'tls / plain: %.3f\n' "$(echo "$mt / $mp" | bc -l)"

# Same world, same ticks: the same cells on both beds.
a="$(colony bnplain | jq -c '{tick, population, fingerprint}')"
b="$(colony bntls | jq -c '{tick, population, fingerprint}')"
if [ "$a" = "$b" ]; then echo "both beds at $a"; else echo "the beds differ: plain $a, tls $b" >&2; exit 1; fi
