#!/usr/bin/env bash
# The built-in test topology: one L2 segment (a bridge in its own namespace)
# joining a client, the LB node and three backends, each in a network
# namespace named <prefix>-<host>. Addresses are from 198.18.0.0/15 and
# 2001:db8::/32 only.
#
#   client  198.18.100.1/24, 2001:db8:100::1/64; default routes via the LB,
#           as an ECMP router would route the VIPs to an LB node
#   lb      198.18.100.2/24, 198.18.0.2/24, 2001:db8:100::2/64, 2001:db8::2/64
#           on eth0 (the dataplane's port)
#   be1..3  198.18.0.11-13/24, 2001:db8::11-13/64; VIPs 198.18.1.1-5 and
#           2001:db8:1::1-5 on lo; replies to the client subnets go straight
#           to the client (dsr) or through the LB (nat)
#
# The LB's eth0 gets $SLUICE_LB_QUEUES RX/TX queue pairs (default 1), one
# per dataplane worker; the bridge side spreads flows over them by hash.
#
# usage: topology.sh up PREFIX [dsr|nat] | route PREFIX dsr|nat | down PREFIX
set -euo pipefail

cmd=${1:?usage: topology.sh up|route|down PREFIX [dsr|nat]}
prefix=${2:?prefix}
hosts=(client lb be1 be2 be3)
CLIENT_NET=198.18.100
BACKEND_NET=198.18.0
VIP_NET=198.18.1
CLIENT_NET6=2001:db8:100:
BACKEND_NET6=2001:db8:
VIP_NET6=2001:db8:1:

ns() { ip netns exec "$prefix-$1" "${@:2}"; }

quiet_offloads() {
  # Checksums must be complete on the wire: the dataplane reads frames from an
  # AF_PACKET/AF_XDP socket, after the point where the kernel would fill them
  # in, and segmentation offloads would hand it 64 KiB super-frames.
  ns "$1" ethtool -K eth0 tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
}

route_mode() {
  local mode=$1
  for b in 1 2 3; do
    if [ "$mode" = nat ]; then
      ns "be$b" ip route replace "$CLIENT_NET.0/24" via "$BACKEND_NET.2" dev eth0
      ns "be$b" ip -6 route replace "$CLIENT_NET6:/64" via "$BACKEND_NET6:2" dev eth0
    else
      ns "be$b" ip route replace "$CLIENT_NET.0/24" dev eth0
      ns "be$b" ip -6 route replace "$CLIENT_NET6:/64" dev eth0
    fi
  done
}

up() {
  local mode=${1:-dsr}
  ip netns add "$prefix-sw"
  ns sw ip link add br0 type bridge
  ns sw ip link set br0 up
  local i=0
  for h in "${hosts[@]}"; do
    i=$((i + 1))
    ip netns add "$prefix-$h"
    local q=1
    [ "$h" = lb ] && q=${SLUICE_LB_QUEUES:-1}
    ip link add "sl$$-$i" numtxqueues "$q" numrxqueues "$q" type veth \
      peer name eth0 numtxqueues "$q" numrxqueues "$q" netns "$prefix-$h"
    ip link set "sl$$-$i" netns "$prefix-sw"
    ns sw ip link set "sl$$-$i" master br0 up
    ns "$h" ip link set lo up
    ns "$h" ip link set eth0 address "02:5e:00:00:00:0$i"
    ns "$h" ip link set eth0 up
    ns "$h" sysctl -qw net.ipv6.conf.all.disable_ipv6=0
    quiet_offloads "$h"
  done
  ns client ip addr add "$CLIENT_NET.1/24" dev eth0
  ns client ip route add default via "$CLIENT_NET.2"
  ns client ip -6 addr add "$CLIENT_NET6:1/64" dev eth0 nodad
  ns client ip -6 route add default via "$CLIENT_NET6:2"
  # Connections may reuse a source port right after closing (tests replay
  # the same 5-tuples).
  ns client sysctl -qw net.ipv4.tcp_tw_reuse=1
  ns lb ip addr add "$CLIENT_NET.2/24" dev eth0
  ns lb ip addr add "$BACKEND_NET.2/24" dev eth0
  ns lb ip -6 addr add "$CLIENT_NET6:2/64" dev eth0 nodad
  ns lb ip -6 addr add "$BACKEND_NET6:2/64" dev eth0 nodad
  ns lb sysctl -qw net.ipv6.conf.all.forwarding=0
  # The LB node's kernel must not forward VIP traffic itself: the dataplane does.
  ns lb sysctl -qw net.ipv4.ip_forward=0
  for b in 1 2 3; do
    ns "be$b" ip addr add "$BACKEND_NET.1$b/24" dev eth0
    ns "be$b" ip -6 addr add "$BACKEND_NET6:1$b/64" dev eth0 nodad
    for v in 1 2 3 4 5; do
      ns "be$b" ip addr add "$VIP_NET.$v/32" dev lo
      ns "be$b" ip -6 addr add "$VIP_NET6:$v/128" dev lo nodad
    done
    # Decapsulated packets arrive on eth0 for an address on lo.
    ns "be$b" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
  done
  route_mode "$mode"
  # Resolve every neighbour once so sluiced finds backend MACs in the table.
  for b in 1 2 3; do
    ns lb ping -c1 -W1 "$BACKEND_NET.1$b" >/dev/null
    ns lb ping -6 -c1 -W2 "$BACKEND_NET6:1$b" >/dev/null
  done
  ns client ping -c1 -W1 "$CLIENT_NET.2" >/dev/null
  ns client ping -6 -c1 -W2 "$CLIENT_NET6:2" >/dev/null
}

down() {
  for h in "${hosts[@]}" sw; do
    if ip netns list | grep -qw "$prefix-$h"; then
      ip netns pids "$prefix-$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$prefix-$h" 2>/dev/null || true
    fi
  done
}

case $cmd in
  up) down; up "${3:-dsr}" ;;
  route) route_mode "${3:?dsr|nat}" ;;
  down) down ;;
  *) echo "usage: topology.sh up|route|down PREFIX [dsr|nat]" >&2; exit 2 ;;
esac
